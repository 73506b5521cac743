"""Per-step metadata passed explicitly through the model (never via globals)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import torch


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # prefill of new tokens on top of a (possibly empty) cached prefix
    DECODE = "decode"  # exactly one new token per request
    # a decode step with drafts: each request's new tokens (last token + draft) attend
    # exactly as consecutive decode steps would, one decode row per token
    VERIFY = "verify"


@dataclass
class ForwardBatch:
    """Tokens of all requests are flattened: T = sum(extend_lens)."""

    mode: ForwardMode
    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    out_cache_loc: torch.Tensor  # int64 [T]: KV slot each new token writes
    extend_lens: list[int]  # [B] new tokens per request
    seq_lens: list[int]  # [B] KV length per request after this step (prefix + new)
    kv_indices: torch.Tensor  # int64 [B, max(seq_lens)]: slots to read, padded with 0
    logits_indices: torch.Tensor  # int64 [N]: rows of the hidden states that need logits
    attn_metadata: Any = None  # filled by the attention backend's init_forward_metadata

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens)
