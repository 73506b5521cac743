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
    kv_flat: torch.Tensor  # int64 [B * max_kv]: slots to gather, row-major over kv_indices
    max_kv: int
    # extend only (None when every request has exactly one new token):
    q_index: torch.Tensor | None  # int64 [B * max_q]: row of q for each padded query (padding -> 0)
    out_index: torch.Tensor | None  # int64 [T]: flat position in [B * max_q] of each real query
    mask: torch.Tensor | None  # bool [B, 1, max_q, max_kv]: True = may attend; None = no mask needed
    # decode only: float32 [B, 1, max_kv], 0 where a key is real and -inf on padding
    decode_bias: torch.Tensor | None


class TorchNativeBackend(AttentionBackend):
    """Gathers each request's KV from the pool into [B, max_kv] (padded) once per layer;
    the index tensors and masks are built once per step, so there is no Python loop over
    requests inside the layers.

    Extend: queries padded to [B, max_q], one SDPA call with a causal+padding mask.
    Decode (one query per request): a grouped-query matmul-softmax-matmul. On CPU this
    is several times faster than SDPA, whose flash kernel pads one query up to a block.
    Gathers use index_select (a tight copy loop; advanced indexing is ~10x slower)."""

    def init_forward_metadata(self, fb: "ForwardBatch") -> None:
        q_lens = torch.tensor(fb.extend_lens, dtype=torch.int64)  # [B]
        kv_lens = torch.tensor(fb.seq_lens, dtype=torch.int64)  # [B]
        max_q, max_kv = int(q_lens.max()), fb.kv_indices.shape[1]
        device = fb.input_ids.device
        kv_flat = fb.kv_indices.reshape(-1)
        kj = torch.arange(max_kv)[None, None, :]  # [1, 1, max_kv]
        if max_q == 1:
            pad = kj >= kv_lens[:, None, None]  # [B, 1, max_kv]
            bias = torch.zeros(pad.shape, dtype=torch.float32).masked_fill_(pad, float("-inf"))
            fb.attn_metadata = PaddedMetadata(kv_flat, max_kv, None, None, None, bias.to(device))
            return
        starts = torch.cumsum(q_lens, 0) - q_lens  # [B] first row of each request in q
        qi = torch.arange(max_q)[None, :]  # [1, max_q]
        valid = qi < q_lens[:, None]  # [B, max_q]
        q_index = torch.where(valid, starts[:, None] + qi, torch.zeros_like(qi))
        b_index = torch.arange(len(q_lens))[:, None] * max_q + qi  # [B, max_q]
        out_index = b_index[valid]
        # query i of request b sits at position prefix_b + i and sees keys j <= that position
        prefix = (kv_lens - q_lens)[:, None, None]  # [B, 1, 1]
        mask = (kj <= prefix + qi[:, :, None]) & (kj < kv_lens[:, None, None])  # [B, max_q, max_kv]
        fb.attn_metadata = PaddedMetadata(
            kv_flat, max_kv, q_index.reshape(-1).to(device), out_index.to(device),
            mask[:, None].to(device), None)

    def forward(self, q, k, v, layer_id, fb):
        pool, md = self.pool, fb.attn_metadata
        pool.k_buffers[layer_id].index_copy_(1, fb.out_cache_loc, k.transpose(0, 1))
        pool.v_buffers[layer_id].index_copy_(1, fb.out_cache_loc, v.transpose(0, 1))
        b, hkv = fb.batch_size, self.num_kv_heads
        keys = pool.k_buffers[layer_id].index_select(1, md.kv_flat).view(hkv, b, md.max_kv, -1)
        values = pool.v_buffers[layer_id].index_select(1, md.kv_flat).view(hkv, b, md.max_kv, -1)
        if md.decode_bias is not None:
            return self._decode(q, keys, values, md.decode_bias)
        max_q = len(md.q_index) // b
        queries = q.index_select(0, md.q_index).view(b, max_q, self.num_heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(queries, keys.transpose(0, 1), values.transpose(0, 1),
                                             attn_mask=md.mask, scale=self.scale,
                                             enable_gqa=self.num_heads != hkv)
        out = out.transpose(1, 2).reshape(b * max_q, -1)  # [B * max_q, H * D]
        return out.index_select(0, md.out_index)  # [T, H * D]

    def _decode(self, q, keys, values, bias):
        """q: [B, H, D]; keys/values: [Hkv, B, max_kv, D] (contiguous, straight from the
        gather); bias: [B, 1, max_kv] -> [B, H * D]. Query heads are grouped by the KV head
        they share, batch dims ordered (Hkv, B) so that no KV copy is needed."""
        b, hkv = q.shape[0], self.num_kv_heads
        qg = q.view(b, hkv, self.num_heads // hkv, -1).transpose(0, 1)  # [Hkv, B, G, D]
        scores = torch.matmul(qg, keys.transpose(-1, -2))  # [Hkv, B, G, max_kv]
        probs = torch.softmax(scores.float() * self.scale + bias, dim=-1).to(q.dtype)
        out = torch.matmul(probs, values)  # [Hkv, B, G, D]
        return out.transpose(0, 1).reshape(b, -1)
