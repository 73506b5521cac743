"""Load a Hugging Face checkpoint directory (single or sharded safetensors) into a model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from runtime.config import ModelConfig
from runtime.models.registry import get_model_class


def safetensors_files(model_path: Path) -> list[Path]:
    index = model_path / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_path / n for n in names]
    files = sorted(model_path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in {model_path}")
    return files


@torch.no_grad()
def load_model(model_path: str | Path, cfg: ModelConfig, dtype: torch.dtype, device: str):
    model_path = Path(model_path)
    cls = get_model_class(cfg.architecture)
    with torch.device("meta"):
        model = cls(cfg)
    model = model.to_empty(device=device).to(dtype)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for file in safetensors_files(model_path):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                if "rotary_emb" in key or (cfg.tie_word_embeddings and key == "lm_head.weight"):
                    continue
                tensor = f.get_tensor(key)
                loaded.add(_load_one(model, params, key, tensor, cls.packed_modules_mapping))
    missing = set(params) - loaded
    if missing:
        raise ValueError(f"checkpoint {model_path} is missing weights: {sorted(missing)[:8]}")
    # rotary tables are computed, not loaded (meta init left them empty)
    model.rotary = type(model.rotary)(cfg.head_dim, cfg.max_position_embeddings,
                                      cfg.rope_theta, cfg.rope_scaling).to(device)
    return model.eval()


def _load_one(model, params, key: str, tensor: torch.Tensor, packed: dict) -> str:
    """Copy one checkpoint tensor into its (possibly fused) parameter; returns the param name."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in packed:
            fused, shard = packed[part]
            name = ".".join(parts[:i] + [fused] + parts[i + 1:])
            module = model.get_submodule(".".join(parts[:i] + [fused]))
            module.load_shard(shard, parts[-1], tensor)
            return name
    if key not in params:
        raise ValueError(f"unexpected checkpoint weight {key!r}")
    param = params[key]
    if param.shape != tensor.shape:
        raise ValueError(f"weight {key}: checkpoint shape {tuple(tensor.shape)} != model {tuple(param.shape)}")
    param.copy_(tensor)
    return key
