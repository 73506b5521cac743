"""Load a Hugging Face checkpoint directory (single or sharded safetensors) into a model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from runtime.config import ModelConfig
from runtime.layers.parallel import SINGLE, TensorParallel
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
def load_model(model_path: str | Path, cfg: ModelConfig, dtype: torch.dtype, device: str,
               tp: TensorParallel = SINGLE):
    """The model for rank `tp.rank`: each checkpoint tensor is read slice by slice from the
    file (safetensors slices), so a rank never holds more than its shard of a weight."""
    model_path = Path(model_path)
    cls = get_model_class(cfg.architecture)
    with torch.device("meta"):
        model = cls(cfg, tp)
    model = model.to_empty(device=device).to(dtype)
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for file in safetensors_files(model_path):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                if "rotary_emb" in key or (cfg.tie_word_embeddings and key == "lm_head.weight"):
                    continue
                loaded.add(_load_one(model, params, key, f.get_slice(key), cls, tp))
    missing = set(params) - loaded
    if missing:
        raise ValueError(f"checkpoint {model_path} is missing weights: {sorted(missing)[:8]}")
    # rotary tables are computed, not loaded (meta init left them empty)
    model.rotary = type(model.rotary)(cfg.head_dim, cfg.max_position_embeddings,
                                      cfg.rope_theta, cfg.rope_scaling).to(device)
    return model.eval()


def _load_one(model, params, key: str, file_slice, cls, tp: TensorParallel) -> str:
    """Copy one checkpoint tensor (this rank's slice of it) into its (possibly fused)
    parameter; returns the param name. file_slice: safetensors' lazy slice of the tensor."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in cls.packed_modules_mapping:
            fused, shard = cls.packed_modules_mapping[part]
            name = ".".join(parts[:i] + [fused] + parts[i + 1:])
            module = model.get_submodule(".".join(parts[:i] + [fused]))
            rows = module.shard_offsets[shard][1]  # this rank's rows of the shard (column-parallel)
            if file_slice.get_shape()[0] != rows * tp.size:
                raise ValueError(f"shard {shard} of {key}: expected {rows * tp.size} rows, got "
                                 f"{tuple(file_slice.get_shape())}")
            module.load_shard(shard, parts[-1], _rows(file_slice, tp.rank * rows, rows))
            return name
    if key not in params:
        raise ValueError(f"unexpected checkpoint weight {key!r}")
    param, module_name = params[key], parts[-2] if len(parts) > 1 else ""
    if tp.size > 1 and module_name in cls.vocab_parallel_modules:
        vocab_size = model.config.vocab_size
        _checked(key, file_slice, (vocab_size, param.shape[1]))
        first, rows = tp.vocab_rows(vocab_size)
        tensor = _rows(file_slice, first, min(rows, vocab_size - first))
        param.zero_()  # the padding rows of the last slice
        param[:tensor.shape[0]].copy_(tensor)
        return key
    if tp.size > 1 and module_name in cls.row_parallel_modules and parts[-1] == "weight":
        cols = param.shape[1]
        _checked(key, file_slice, (param.shape[0], cols * tp.size))
        tensor = file_slice[:, tp.rank * cols:(tp.rank + 1) * cols]
    else:
        tensor = file_slice[:]
    param.copy_(_checked(key, tensor, tuple(param.shape)))
    return key


def _rows(file_slice, start: int, count: int) -> torch.Tensor:
    if start + count > file_slice.get_shape()[0]:
        raise ValueError(f"checkpoint tensor of shape {tuple(file_slice.get_shape())} has no rows "
                         f"{start}..{start + count}")
    return file_slice[start:start + count]


def _checked(key: str, tensor, shape: tuple):
    """tensor: a torch.Tensor or a safetensors slice (get_shape)."""
    got = tuple(tensor.shape if isinstance(tensor, torch.Tensor) else tensor.get_shape())
    if got != tuple(shape):
        raise ValueError(f"weight {key}: checkpoint shape {got} != model {tuple(shape)}")
    return tensor
