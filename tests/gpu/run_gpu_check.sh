#!/usr/bin/env bash
# The GPU check (issue 19), on one CUDA GPU (an H100/H200), from a copy of the repo with
# .gpu-check/ beside it (tests/gpu/prepare.sh); under 8 minutes:
#   1. the kernel tests on the GPU (tests/kernels: real Triton, no interpreter)
#   2. the engine's GPU path against transformers (tests/gpu: triton backend, CUDA graphs,
#      fused kernels, grammar mask on the device)
#   3. `radixflow bench decode`: the default model's shape and the 0.5B shape, bf16, batch 1
#      and 64, ours with and without CUDA graphs beside transformers generate: tokens/s and
#      bandwidth utilisation
# Results go to $OUT (the device tool's folder) or docs/bench: decode-<gpu>.json/.md (read by
# `radixflow bench report`), gpu-tests.log. Exit status: 0 when every part passed.
set -uo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${OUT:-docs/bench}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 RADIXFLOW_CACHE_DIR=$PWD/.gpu-check/cache
if compgen -G ".gpu-check/wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site \
    .gpu-check/wheels/*.whl || exit 2
  export PYTHONPATH=/tmp/gpu-check-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || exit 2
"$PY" -c "import torch, triton, transformers; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" || exit 2
status=0
timeout 270 "$PY" -m pytest -q -p no:cacheprovider tests/kernels tests/gpu 2>&1 | tee "$RESULTS/gpu-tests.log" \
  || status=1
timeout 330 "$PY" -m runtime.cli bench decode --out "$RESULTS/decode-{device}.json" 2>&1 | tee "$RESULTS/gpu-bench.log" \
  || status=1
exit $status
