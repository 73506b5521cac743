"""Frozen configuration objects. "auto" values are resolved before freezing."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelConfig:
    """The parts of a Hugging Face config.json that the model code needs."""

    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    checkpoint_dtype: str
    eos_token_ids: tuple[int, ...]
    sliding_window: int | None = None

    @classmethod
    def from_hf(cls, model_path: str | Path) -> "ModelConfig":
        path = Path(model_path)
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise ValueError(f"{path} is not a model directory: config.json not found")
        hf = json.loads(cfg_file.read_text())
        archs = hf.get("architectures") or []
        if not archs:
            raise ValueError(f"{cfg_file} has no 'architectures' entry")
        hidden = hf["hidden_size"]
        num_heads = hf["num_attention_heads"]
        rope = hf.get("rope_parameters") or {}
        rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None
        return cls(
            architecture=archs[0],
            hidden_size=hidden,
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hidden // num_heads,
            intermediate_size=hf["intermediate_size"],
            vocab_size=hf["vocab_size"],
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", False)),
            checkpoint_dtype=str(hf.get("dtype") or hf.get("torch_dtype") or "float32"),
            eos_token_ids=_eos_ids(path, hf),
            sliding_window=hf.get("sliding_window") if hf.get("use_sliding_window", True) else None,
        )


def _eos_ids(path: Path, hf: dict) -> tuple[int, ...]:
    """EOS ids from generation_config.json (preferred) or config.json."""
    ids: Any = None
    gen = path / "generation_config.json"
    if gen.exists():
        ids = json.loads(gen.read_text()).get("eos_token_id")
    if ids is None:
        ids = hf.get("eos_token_id")
    if ids is None:
        return ()
    return tuple(ids) if isinstance(ids, list) else (int(ids),)


SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine process needs; built from `Engine(**options)` or CLI flags."""

    model_path: str | None = None  # None: the built-in demo model
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    context_length: int | None = None  # default: the model's max_position_embeddings
    max_total_tokens: int | None = None  # KV pool size in tokens; default from mem_fraction
    mem_fraction: float = 0.3  # of free memory given to the KV pool when max_total_tokens is unset
    page_size: int = 1
    chunked_prefill_size: int = 2048
    max_prefill_tokens: int = 8192
    max_running_requests: int = 128
    max_queued_requests: int = 1024
    schedule_policy: str = "lpm"
    disable_radix_cache: bool = False
    random_seed: int = 0
    grammar_backend: str = "auto"  # auto | xgrammar | llguidance | outlines
    grammar_compile_timeout_s: float = 30.0  # per compile, from its start (queued time does not count)
    enable_jump_forward: bool = False  # see docs/benchmarks.md for why it is off by default
    num_threads: int | None = None  # torch CPU threads in the engine process
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        check(self.dtype in ("auto", *DTYPES), f"dtype must be auto or one of {list(DTYPES)}, got {self.dtype!r}")
        check(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")
        check(self.page_size >= 1, "page_size must be >= 1")
        check(self.chunked_prefill_size >= 1, "chunked_prefill_size must be >= 1")
        check(self.max_prefill_tokens >= 1, "max_prefill_tokens must be >= 1")
        check(self.max_running_requests >= 1, "max_running_requests must be >= 1")
        check(self.max_queued_requests >= 1, "max_queued_requests must be >= 1")
        check(self.schedule_policy in SCHEDULE_POLICIES,
              f"schedule_policy must be one of {SCHEDULE_POLICIES}, got {self.schedule_policy!r}")
        check(self.max_total_tokens is None or self.max_total_tokens >= 2,
              "max_total_tokens must be >= 2")
        check(0.0 < self.mem_fraction <= 0.95, "mem_fraction must be in (0, 0.95]")

    @classmethod
    def from_options(cls, **options: Any) -> "EngineConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown engine option(s) {unknown}; known: {sorted(known - {'extra'})}")
        return cls(**options)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self, model: ModelConfig) -> torch.dtype:
        """auto: the checkpoint's dtype, except fp16 on CPU becomes bf16... on CPU
        only fp32/bf16 are supported, on CUDA fp16/bf16 (fp32 checkpoints run bf16)."""
        device = self.resolved_device()
        name = self.dtype
        if name == "auto":
            name = model.checkpoint_dtype if model.checkpoint_dtype in DTYPES else "float32"
            if device == "cpu" and name == "float16":
                name = "bfloat16"
            if device == "cuda" and name == "float32":
                name = "bfloat16"
        if device == "cpu" and name == "float16":
            raise ValueError("dtype float16 is not supported on CPU; use bfloat16 or float32")
        return DTYPES[name]
