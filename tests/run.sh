#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, starts the project's
# single-node SLURM cluster, then runs the whole suite. Needs root for apt (CI runs as root).
#
# The cluster lives in $VIRNUCPRO_SLURM_DIR (default /tmp/virnucpro-slurm). When one is already up
# there it is used and left running; otherwise the one started here is stopped when the suite ends
# (also on failure or Ctrl-C). Its TCP ports are 6817-6820, or the first free block of four above
# when those are taken; VIRNUCPRO_SLURM_PORT_BASE=P chooses P..P+3 instead. Arguments go to pytest.
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
    # The container tests build the image with podman on a debootstrap base and run it with ch-run.
    tools=()
    command -v podman >/dev/null || tools+=(podman)
    command -v debootstrap >/dev/null || tools+=(debootstrap)
    command -v ch-run >/dev/null && command -v ch-convert >/dev/null || tools+=(charliecloud)
    if [ $((${#need[@]} + ${#tools[@]})) -gt 0 ]; then
        apt-get update -qq
    fi
    if [ ${#need[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if [ ${#tools[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tools[@]}" >/dev/null
    fi
    cluster="${VIRNUCPRO_SLURM_DIR:-/tmp/virnucpro-slurm}"
    if [ -f "$cluster/env.sh" ] && command -v scontrol >/dev/null \
            && SLURM_CONF="$cluster/etc/slurm.conf" timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; then
        echo "using the SLURM cluster already up in $cluster (left running)" >&2
    else
        # From here on, whatever ends this script stops the cluster it started.
        trap 'status=$?; trap - EXIT; bash tests/slurm/stop-cluster.sh "$cluster" >&2 || true; exit "$status"' EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        bash tests/slurm/start-cluster.sh "$cluster"
    fi
    # shellcheck disable=SC1091
    source "$cluster/env.sh"
else
    echo "not root: SLURM cluster and browser tests need 'sudo bash tests/run.sh' (they are skipped outside CI)" >&2
fi

python3 -m pytest tests -q -ra --durations=15 "$@"
