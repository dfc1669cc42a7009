#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine, in four steps (cuda, score and train were sized for 8
# minutes on one H200, sharded for about 3 more: run them in two calls of the device tool, see below):
#   cuda     the tests that need CUDA (tests/test_cuda.py; they skip on a CPU);
#   sharded  tests/test_train.py's runs of each accelerate config of docs/accelerate/ (DDP, FSDP2 with sharded and
#            with full state dict, DeepSpeed ZeRO-2 and ZeRO-3) on CUDA through accelerate's own GPU path, one
#            process per GPU (two at most: one on a one-GPU machine); CI runs them on CPU, where the processes set
#            the engine themselves because accelerate applies FSDP and DeepSpeed to GPU processes only;
#   score    `repo score` hf (and vllm, where installed) against TRL's precompute, bf16, on random-init models
#            shaped as SmolLM2-135M, Llama-3.2-1B and Llama-3.1-8B (bench/random_models.py: nothing is downloaded);
#   train    `repo train` DPO and RE-DPO against TRL's DPOTrainer (bf16 autocast, as users train) on the first two.
# Each bench prints pairs/s, real tokens/s and MFU against the GPU's bf16 peak, and the ratios; everything is
# also written under $OUT (the device tool brings it back).
#
#   bash bench/gpu.sh [STEP...]            on the GPU machine (its python3 holds CUDA torch; what it lacks travels
#                                          as wheels in .whl/, see bench/README.md "GPU"); all steps by default; a
#                                          call of the device tool has 10 minutes: `cuda sharded`, then `score train`
#   bash bench/gpu.sh --dry-run [STEP...]  the same steps on this CPU at toy size, float32 (CI runs it: the script
#                                          cannot rot; its sharded step only collects the tests, which CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
dry_run=""
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
steps=" ${*:-cuda sharded score train} "
wanted() { [[ "$steps" == *" $1 "* ]]; }

if [ -n "$dry_run" ]; then
    PY=${PYTHON:-.venv/bin/python}
    device=cpu dtype=float32 bf16="" pairs=16 train_pairs=16 limit=300
    score_models="random:tiny" train_models="random:tiny"
else
    PY=${PYTHON:-python3}
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    mkdir -p /tmp/site && ln -sfn "$PWD" /tmp/site/re_po  # the package re_po is this folder (pyproject.toml)
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    device=cuda dtype=bfloat16 bf16=--bf16 pairs=512 train_pairs=256 limit=240
    score_models="random:smollm2-135m random:llama-1b random:llama-8b"
    train_models="random:smollm2-135m random:llama-1b"  # 8B full fine-tuning (fp32 Adam) does not fit one GPU
fi
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1

has() { "$PY" -c "import $1" 2>/dev/null; }
score_skip=(hf-padded hf-unsorted hf-glibc-malloc) train_skip=(simpo re-simpo dpo-padded dpo-glibc-malloc)
has trl || { echo "trl is not installed: no TRL rows"; score_skip+=(trl); train_skip+=(trl trl-precompute); }
has vllm || { echo "vllm is not installed: no vllm row"; score_skip+=(vllm); }

failed=0
step() { "$@" || { echo "FAILED (exit $?): $*"; failed=1; }; }  # one failure does not hide the other rows
{
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__,
'|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
    if wanted cuda; then step "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py; fi
    if wanted sharded; then
        echo "== sharded training: tests/test_train.py, each docs/accelerate config"
        if [ -n "$dry_run" ]; then
            step "$PY" -m pytest -q -p no:cacheprovider --collect-only tests/test_train.py -k two_processes
        else
            step timeout 420 env REPO_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider -rs \
                tests/test_train.py -k two_processes
        fi
    fi
    for model in $score_models; do
        wanted score || break
        echo "== repo score, $model"
        step timeout "$limit" "$PY" bench/score_throughput.py --model "$model" --device "$device" --dtype "$dtype" \
            --pairs "$pairs" --skip "${score_skip[@]}" --json "$OUT/score-${model#random:}.json"
    done
    for model in $train_models; do
        wanted train || break
        echo "== repo train, $model"
        step timeout "$limit" "$PY" bench/train_throughput.py --model "$model" --device "$device" $bf16 \
            --pairs "$train_pairs" --skip "${train_skip[@]}" --json "$OUT/train-${model#random:}.json"
    done
    exit "$failed"
} 2>&1 | tee "$OUT/gpu.log"
