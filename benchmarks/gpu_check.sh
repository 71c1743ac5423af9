#!/usr/bin/env bash
# One prepared GPU check (sized for under 8 minutes on one GPU; untested on a GPU so far): coalition evaluation of the
# small CNN and VGG-11 on cuda in fp32, tf32 and bf16 (GFLOP/s vs the measured matmul rate,
# max difference to fp32, client ranking kept), then the surrogate's Taylor terms on cuda, the logit
# surrogate (enumerated and sampled with the cyclic design) and its sampled Shapley at 100 and 500 players
# (old walk vs class-major walk, difference to the CPU).
# Then the concurrent-jobs path: benchmarks.concurrency runs the demo (2 seeds x 2 arms, 1 round) one
# job at a time and with --jobs 2 on cuda, each client holding a quarter of the GPU (Ray's
# client-resources-num-gpus = 0.25; each Flower run's Ray sees the whole GPU): both wall times,
# their ratio and whether the round records are equal (about 3 more minutes; JSON in $OUT or /tmp).
# Usage: benchmarks/gpu_check.sh [extra args for benchmarks.gpu_check]
# Without a GPU it falls back to a tiny CPU run (--device cpu --quick: small CNN, 3 clients,
# 32 images, fp32), a smoke test only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    timeout 480 "$PY" -m benchmarks.gpu_check --device cuda "$@"
    # Concurrent jobs on the GPU; a difference in the round records is reported, not fatal here
    # (cuDNN kernels need not be bit-reproducible across processes).
    timeout 420 "$PY" -m benchmarks.concurrency --jobs 2 --set 'seeds=[0,1]' --set rounds=1 \
        --set 'runtime.device="cuda"' --set runtime.client_gpus=0.25 \
        --json "${OUT:-/tmp}/concurrency_gpu.json" || echo "benchmarks.concurrency on cuda: exit $?" >&2
else
    echo "no CUDA device visible: running the CPU smoke test instead" >&2
    timeout 480 "$PY" -m benchmarks.gpu_check --device cpu --quick "$@"
fi
