"""Attention backends: an interface and a torch-native implementation.

A backend writes the new tokens' K/V into the KVPool at `out_cache_loc`, then
attends each request's queries over its whole KV (cached prefix + new tokens).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # layers sit below cache/engine in the import order: types only
    from runtime.cache.kv_pool import KVPool
    from runtime.engine.forward_batch import ForwardBatch


class AttentionBackend(abc.ABC):
    def __init__(self, pool: "KVPool", num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        self.pool = pool
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim ** -0.5

    @abc.abstractmethod
    def init_forward_metadata(self, fb: "ForwardBatch") -> None:
        """Build whatever index/mask tensors all layers share, once per step."""

    @abc.abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                fb: "ForwardBatch") -> torch.Tensor:
        """q: [T, H, D], k/v: [T, Hkv, D] for the new tokens -> output [T, H * D]."""


@dataclass
class PaddedMetadata:
    q_index: torch.Tensor  # int64 [B, max_q]: row of q for each padded query (padding -> 0)
    out_index: torch.Tensor  # int64 [T]: flat position in [B * max_q] of each real query
    mask: torch.Tensor | None  # bool [B, 1, max_q, max_kv]: True = may attend; None = no mask needed


class TorchNativeBackend(AttentionBackend):
    """Pads the batch to [B, max_q] queries x [B, max_kv] keys and calls SDPA once
    per layer; the index tensors and the mask are built once per step, so there is
    no Python loop over requests inside the layers."""

    def init_forward_metadata(self, fb: "ForwardBatch") -> None:
        q_lens = torch.tensor(fb.extend_lens, dtype=torch.int64)  # [B]
        kv_lens = torch.tensor(fb.seq_lens, dtype=torch.int64)  # [B]
        max_q, max_kv = int(q_lens.max()), fb.kv_indices.shape[1]
        starts = torch.cumsum(q_lens, 0) - q_lens  # [B] first row of each request in q
        qi = torch.arange(max_q)[None, :]  # [1, max_q]
        valid = qi < q_lens[:, None]  # [B, max_q]
        q_index = torch.where(valid, starts[:, None] + qi, torch.zeros_like(qi))
        b_index = torch.arange(len(q_lens))[:, None] * max_q + qi  # [B, max_q]
        out_index = b_index[valid]
        # query i of request b sits at position prefix_b + i and sees keys j <= that position
        prefix = (kv_lens - q_lens)[:, None, None]  # [B, 1, 1]
        kj = torch.arange(max_kv)[None, None, :]
        mask = (kj <= prefix + qi[:, :, None]) & (kj < kv_lens[:, None, None])  # [B, max_q, max_kv]
        all_full = bool((kv_lens == max_kv).all()) and max_q == 1
        device = fb.input_ids.device
        fb.attn_metadata = PaddedMetadata(
            q_index=q_index.to(device), out_index=out_index.to(device),
            mask=None if all_full else mask[:, None].to(device))

    def forward(self, q, k, v, layer_id, fb):
        pool, md = self.pool, fb.attn_metadata
        pool.k_buffers[layer_id].index_copy_(0, fb.out_cache_loc, k)
        pool.v_buffers[layer_id].index_copy_(0, fb.out_cache_loc, v)
        keys = pool.k_buffers[layer_id][fb.kv_indices].transpose(1, 2)  # [B, Hkv, max_kv, D]
        values = pool.v_buffers[layer_id][fb.kv_indices].transpose(1, 2)
        queries = q[md.q_index].transpose(1, 2)  # [B, H, max_q, D]
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=md.mask,
                                             scale=self.scale,
                                             enable_gqa=self.num_heads != self.num_kv_heads)
        b, h, max_q, d = out.shape
        out = out.transpose(1, 2).reshape(b * max_q, h * d)  # [B * max_q, H * D]
        return out[md.out_index]  # [T, H * D]
