#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, starts the project's
# single-node SLURM cluster, then runs the whole suite. Needs root for apt (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c "import torch" 2>/dev/null; then
    python3 -m pip install -q torch==2.13.0  # CPU build; GPU users install their own torch first
fi
python3 -m pip install -q -e '.[test]'

if [ "$(id -u)" = 0 ]; then
    need=()
    command -v chromium >/dev/null || need+=(chromium)
    command -v chromedriver >/dev/null || need+=(chromium-driver)
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    bash tests/slurm/start-cluster.sh "${VIRNUCPRO_SLURM_DIR:-/tmp/virnucpro-slurm}"
    # shellcheck disable=SC1091
    source "${VIRNUCPRO_SLURM_DIR:-/tmp/virnucpro-slurm}/env.sh"
else
    echo "not root: SLURM cluster and browser tests need 'sudo bash tests/run.sh' (they are skipped outside CI)" >&2
fi

python3 -m pytest tests -q -ra --durations=15 "$@"
