#!/usr/bin/env bash
# What a session lent a GPU owes the packed ESM-2 engine, in one call:
#   the GPU accuracy tests (3B architecture, fp16 and bf16 against fair-esm fp32), then the
#   throughput benchmark (original way, fair-esm fp16, the engine, the engine compiled), then the
#   DNABERT-S benchmark (real 768/12/12 architecture: native fp32 and fp16 against the remote code).
#
# On the device tool's machine (Python 3.12, torch 2.11, no internet), fair-esm travels as a wheel:
#   here:   echo /.whl/ >> .git/info/exclude; pip download --no-deps -d .whl fair-esm==2.0.0
#           (for DNABERT-S also: transformers tokenizers safetensors einops huggingface_hub, if the
#           device lacks them; not yet tried there)
#   device: run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=600)
# Logs go to $OUT (the device tool brings them back) or ./gpu-session.
# VIRNUCPRO_BENCH_MODEL / VIRNUCPRO_BENCH_DEVICE (default 3B / cuda) let it be tried on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-session}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/virnucpro-site .whl/*.whl
    export PYTHONPATH="/tmp/virnucpro-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
model="${VIRNUCPRO_BENCH_MODEL:-3B}"
device="${VIRNUCPRO_BENCH_DEVICE:-cuda}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } | tee "$out/machine.txt"
python3 -m pytest -m gpu tests/test_esm2_packed.py -q -rs 2>&1 | tee "$out/gpu-tests.log"
python3 bench/esm2_throughput.py --model "$model" --device "$device" --compile 2>&1 | tee "$out/esm2-$model-$device.log"
for precision in fp32 fp16; do
    python3 bench/dnabert_throughput.py --model real-arch --device "$device" --precision "$precision" --n 4000 \
        --original-n 400 2>&1 | tee "$out/dnabert-real-arch-$device-$precision.log"
done
