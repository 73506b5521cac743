"""Swappable engine parts, chosen by name (EngineConfig fields and CLI flags): one table
per kind, name -> "module:attribute". An entry is imported only when it is chosen, so
this module imports nothing and every layer may read the names; a broken entry fails
loudly with its ImportError, never by silently falling back to another part."""

from __future__ import annotations

import importlib
from typing import Any

SCHEDULE_POLICIES = {  # order the waiting queue: (waiting, cache) -> waiting in run order
    "fcfs": "runtime.engine.schedule_policy:order_fcfs",
    "lpm": "runtime.engine.schedule_policy:order_longest_prefix",
    "dfs-weight": "runtime.engine.schedule_policy:order_dfs_weight",
}
PREFIX_CACHES = {  # PrefixCache(pool, page_size=...)
    "radix": "runtime.cache.radix_cache:RadixCache",
    "none": "runtime.cache.prefix_cache:NoPrefixCache",
}
ATTENTION_BACKENDS = {  # AttentionBackend(pool, num_heads, num_kv_heads, head_dim)
    "torch_native": "runtime.layers.attention:TorchNativeBackend",
    "triton": "runtime.kernels.backend:TritonBackend",  # CUDA (or CPU under TRITON_INTERPRET=1)
    "triton-reference": "runtime.kernels.backend:TritonReferenceBackend",  # the kernels' torch references
}
GRAMMAR_BACKENDS = {  # GrammarBackend(tokenizer, vocab_size, eos_token_ids, **options)
    "xgrammar": "runtime.constrained.xgrammar_backend:XGrammarBackend",
    "llguidance": "runtime.constrained.llguidance_backend:LLGuidanceBackend",
    "outlines": "runtime.constrained.outlines_backend:OutlinesBackend",
}


def load(table: dict[str, str], name: str, what: str) -> Any:
    """The part registered under `name` in `table` (ValueError naming the choices)."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; available: {sorted(table)}")
    module, attribute = table[name].split(":")
    return getattr(importlib.import_module(module), attribute)
