"""Model classes keyed by config.json `architectures`, imported lazily."""

import importlib

_MODELS = {
    "LlamaForCausalLM": ("runtime.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("runtime.models.llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("runtime.models.qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("runtime.models.qwen3", "Qwen3ForCausalLM"),
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architecture: str):
    if architecture not in _MODELS:
        raise ValueError(f"unsupported architecture {architecture!r}; supported: {supported_architectures()}")
    module, name = _MODELS[architecture]
    return getattr(importlib.import_module(module), name)
