#!/usr/bin/env bash
# Every figure a session lent a GPU owes the engines, in one call of at most ~8 minutes:
#   1. quick (~1 min, written first): varlen signature, GEMM-only bound at 65,536 tokens for
#      fp16/bf16/fp8, the engine's tok/s on 512 proteins, bitwise-repeat check, peak memory
#      (bench/gpu_quick.py);
#   2. the GPU tests (3B architecture fp16/bf16 against fair-esm fp32, compiled engine, bitwise
#      repeat on CUDA);
#   3. ESM-2 throughput on 2048 166-aa proteins: fair-esm fp16, the engine eager and compiled,
#      fp16 and bf16, fp32 and compute-dtype residual; fair-esm fp32 on 256 of them only (its
#      figure is known: 6.3K tok/s);
#   4. DNABERT-S, real 768/12/12 architecture: native fp16 and fp32 against the remote code.
#
# Never stops at a failed step: each step's outcome is one JSON line in $OUT/steps.jsonl
# (ok / failed / timed_out / skipped), each figure one JSON line in $OUT/figures.jsonl (written
# as it is measured), every step's output goes to $OUT/session.log. Time budget:
# VIRNUCPRO_BENCH_BUDGET_S (default 480 s, from the script's start); a step starts only if its
# estimate (seconds on an H100) fits in what is left, and is stopped when the budget is spent.
#
# On the device tool's machine (Python 3.12, torch 2.11, h5py, tokenizers, safetensors, einops,
# transformers, pytest; no internet) fair-esm travels as a wheel in the ignored .whl/:
#   here:   pip wheel fair-esm --no-deps -w .whl
#   device: run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=600)
# Without $OUT the files go to ./gpu-session. CI runs this script on a CPU with a tiny model
# (VIRNUCPRO_BENCH_DEVICE=cpu; tests/test_gpu_session.py); VIRNUCPRO_BENCH_MODEL picks the model.
set -uo pipefail  # no -e: a failed step is recorded and the next one runs
cd "$(dirname "$0")/.." || exit 1
out="${OUT:-gpu-session}"
mkdir -p "$out"
figures="$out/figures.jsonl"
steps="$out/steps.jsonl"
log="$out/session.log"
budget="${VIRNUCPRO_BENCH_BUDGET_S:-480}"
device="${VIRNUCPRO_BENCH_DEVICE:-cuda}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ "$device" == cpu ]]; then
    model="${VIRNUCPRO_BENCH_MODEL:-tiny}"
    esm_sizes=(--n 4 --baseline-n 2 --precisions fp32,bf16 --repeats 1 --peak-tflops 1)
    dnabert_sizes=(--model tiny --n 4 --original-n 2)
else
    model="${VIRNUCPRO_BENCH_MODEL:-3B}"
    esm_sizes=(--n 2048 --baseline-n 256 --compile)
    dnabert_sizes=(--model real-arch --n 4000 --original-n 400)
fi

# step NAME ESTIMATE_S COMMAND...: run COMMAND if ESTIMATE_S fits in the budget left, at most
# for what is left; append its outcome to steps.jsonl and its output to session.log.
step() {
    local name=$1 estimate=$2
    shift 2
    local left=$((budget - SECONDS))
    if ((left < estimate)); then
        printf '{"step": "%s", "status": "skipped", "reason": "budget", "estimate_s": %d, "left_s": %d}\n' \
            "$name" "$estimate" "$left" >>"$steps"
        return 0
    fi
    local started=$SECONDS rc status
    printf '\n===== %s (estimate %d s, %d s left): %s\n' "$name" "$estimate" "$left" "$*" >>"$log"
    timeout --kill-after=5 "$left" bash -c '"$@"' "$name" "$@" >>"$log" 2>&1  # bash: the step may be a function
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=timed_out ;;
        *) status=failed ;;
    esac
    printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d, "estimate_s": %d, "left_s": %d}\n' \
        "$name" "$status" "$rc" $((SECONDS - started)) "$estimate" "$left" >>"$steps"
    return 0
}

install_wheels() {
    compgen -G ".whl/*.whl" >/dev/null || { echo "no .whl/*.whl: nothing to install"; return 0; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl
}

machine() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
}

site="$(mktemp -d "${TMPDIR:-/tmp}/virnucpro-site.XXXXXX")"  # where the carried wheels go
trap 'rm -rf "$site"' EXIT
export -f install_wheels machine
export site PYTHONPATH="$site:$PYTHONPATH"
step install_wheels 5 install_wheels
step machine 10 machine
step quick 75 python3 bench/gpu_quick.py --model "$model" --device "$device" --json "$figures"
step gpu_tests 120 python3 -m pytest -m gpu tests/test_esm2_packed.py tests/test_engine_determinism.py -q -rs -p no:cacheprovider
step esm2_throughput 180 python3 bench/esm2_throughput.py --model "$model" --device "$device" --workload frames500 \
    --residual both "${esm_sizes[@]}" --json "$figures"
step dnabert_fp16 40 python3 bench/dnabert_throughput.py "${dnabert_sizes[@]}" --device "$device" --precision fp16 \
    --json "$figures"
step dnabert_fp32 40 python3 bench/dnabert_throughput.py "${dnabert_sizes[@]}" --device "$device" --precision fp32 \
    --json "$figures"
echo "steps: $steps; figures: $figures; log: $log ($SECONDS s of a $budget s budget)"
