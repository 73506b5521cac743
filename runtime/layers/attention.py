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

from runtime.kernels import cpu_attention, cpu_extension

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
        """q: [T, H, D], k/v: [T, Hkv, D] for the new tokens (views: any strides) -> output [T, H * D]."""


@dataclass
class PaddedMetadata:
    # int64 [Hkv * B * max_kv]: rows of a layer's KV buffer viewed as [Hkv * slots, D] to
    # gather, head-major, then row-major over kv_indices (one dim-0 index_select: ~4x
    # faster on CPU than index_select over the slot dim of [Hkv, slots, D])
    kv_flat: torch.Tensor
    max_kv: int
    # extend and verify (None for decode, where every request has exactly one new token):
    q_index: torch.Tensor | None  # int64 [B * max_q]: row of q for each padded query
    out_index: torch.Tensor | None  # int64 [T]: flat position in [B * max_q] of each real query
    # bool [B, 1, max_q, max_kv]: True = may attend; None: plain causal (one request, no
    # cached prefix: SDPA's causal kernel, 1.4-2x faster than a mask at 512-2k tokens)
    mask: torch.Tensor | None
    # decode and verify: float32 [B, M, max_kv], 0 where a key is real and -inf on padding;
    # M = 1 for decode (every query head sees the same keys), max_q * G for verify (query
    # row r * G + g: token r of the request, head g of a KV head's group)
    decode_bias: torch.Tensor | None
    # decode only: int64 [Hkv * S], buffer rows (as kv_flat) of a prefix every request in
    # the batch shares (the radix cache gave them the same slots); kv_flat/max_kv/decode_bias
    # then cover only what follows it. None: no shared prefix worth reading once.
    shared_slots: torch.Tensor | None = None
    shared_range: tuple[int, int] | None = None  # (first slot, S) when those slots are consecutive


@dataclass
class SlotRowsMetadata:
    """Decode and verify with the CPU slot kernels (runtime/kernels/cpu_attention.py): one
    row per new token, read straight from the pool (no gather, no shared-prefix split)."""
    kv_indices: torch.Tensor  # int64 [R, W], W a multiple of DECODE_KV_ALIGN: row r's slots in order
    kv_lens: torch.Tensor  # int64 [R]: keys row r sees (a verify token: its prefix and itself)


MIN_SHARED_PREFIX = 64  # shared KV tokens from which reading them once for the batch pays
# decode keys are padded to a multiple of this: the bf16 matmul kernels block their reduction
# in sizes dividing it, so zero padding past a row's keys adds exact zeros (with unaligned
# lengths ~1 in 400 rows came out different in the last bit)
DECODE_KV_ALIGN = 64


class TorchNativeBackend(AttentionBackend):
    """Gathers each request's KV from the pool into [B, max_kv] (padded) once per layer;
    the index tensors and masks are built once per step, so there is no Python loop over
    requests inside the layers.

    Extend: queries padded to [B, max_q], one SDPA call with a causal+padding mask (none
    for a lone request over an empty prefix: then SDPA's own causal kernel).
    Verify (a decode step with drafts): each new token is a decode row over its request's
    keys up to itself, so it gets the bits a plain decode step would give it; a request's
    KV is gathered once and its tokens' rows are stacked into one product with it.
    Decode (one query per request): a grouped-query matmul-softmax-matmul. On CPU this
    is several times faster than SDPA, whose flash kernel pads one query up to a block.
    When every request of a decode batch starts with the same KV slots (a system prompt,
    a few-shot block or a RAG document the radix cache shares), that prefix is gathered
    and multiplied once for the whole batch (cascade attention) and only each request's
    own tail is gathered per request; one softmax runs over both parts.
    Gathers use index_select (a tight copy loop; advanced indexing is ~10x slower).

    On CPU with float32/bf16 KV, decode and verify skip all of that when the C++ slot
    kernels build (`slot_kernels`): each row's scores and weighted sum read the pool's
    slots directly, row by row, so a row's bits do not depend on the batch around it."""

    def __init__(self, pool: "KVPool", num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__(pool, num_heads, num_kv_heads, head_dim)
        self.slot_kernels = (torch.device(pool.device).type == "cpu" and pool.k_scales is None
                             and pool.dtype in (torch.float32, torch.bfloat16)
                             and cpu_extension.extension() is not None)

    def init_forward_metadata(self, fb: "ForwardBatch") -> None:
        q_lens = torch.tensor(fb.extend_lens, dtype=torch.int64)  # [B]
        kv_lens = torch.tensor(fb.seq_lens, dtype=torch.int64)  # [B]
        max_q, max_kv = int(q_lens.max()), fb.kv_indices.shape[1]
        device = fb.input_ids.device
        if self.slot_kernels and (max_q == 1 or fb.mode.value == "verify"):
            kv_indices = fb.kv_indices
            if max_q > 1:  # one row per new token
                rows, kv_lens = verify_rows(q_lens, kv_lens)
                kv_indices = kv_indices.index_select(0, rows)
            pad = -kv_indices.shape[1] % DECODE_KV_ALIGN  # softmax bits then do not depend on W
            fb.attn_metadata = SlotRowsMetadata(F.pad(kv_indices, (0, pad)).contiguous(), kv_lens)
            return
        if max_q == 1:
            fb.attn_metadata = self._decode_metadata(fb.kv_indices, kv_lens, device)
            return
        if fb.mode.value == "verify":  # one decode row per token
            fb.attn_metadata = self._verify_metadata(fb.kv_indices, q_lens, kv_lens, device)
            return
        kv_flat = self._buffer_rows(fb.kv_indices.reshape(-1))
        kj = torch.arange(max_kv)[None, None, :]  # [1, 1, max_kv]
        starts = torch.cumsum(q_lens, 0) - q_lens  # [B] first row of each request in q
        qi = torch.arange(max_q)[None, :]  # [1, max_q]
        valid = qi < q_lens[:, None]  # [B, max_q]
        q_index = torch.where(valid, starts[:, None] + qi, torch.zeros_like(qi))
        b_index = torch.arange(len(q_lens))[:, None] * max_q + qi  # [B, max_q]
        out_index = b_index[valid]
        mask = None  # a lone request over an empty prefix: plain causal
        if len(q_lens) > 1 or int(kv_lens[0]) != max_q:
            # query i of request b sits at position prefix_b + i and sees keys j <= that position
            prefix = (kv_lens - q_lens)[:, None, None]  # [B, 1, 1]
            mask = (kj <= prefix + qi[:, :, None]) & (kj < kv_lens[:, None, None])  # [B, max_q, max_kv]
            mask = mask[:, None].to(device)
        fb.attn_metadata = PaddedMetadata(
            kv_flat, max_kv, q_index.reshape(-1).to(device), out_index.to(device), mask, None)

    def _buffer_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """int64 [N] slots -> int64 [Hkv * N] rows of a KV buffer viewed as [Hkv * slots, D]."""
        heads = torch.arange(self.num_kv_heads, dtype=torch.int64, device=slots.device)[:, None] * self.pool.num_slots
        return (heads + slots[None, :]).reshape(-1)

    def _decode_metadata(self, kv_indices: torch.Tensor, kv_lens: torch.Tensor, device) -> PaddedMetadata:
        """kv_indices: int64 [B, max_kv]; kv_lens: int64 [B] (each row's KV, its new token included)."""
        return self._rows_metadata(kv_indices, kv_lens[:, None], device)

    def _verify_metadata(self, kv_indices, q_lens, kv_lens, device) -> PaddedMetadata:
        """kv_indices: int64 [B, max_kv]; q_lens, kv_lens: int64 [B] (the request's last token
        and draft; its KV after the step). Token r of request b sees the first
        kv_lens[b] - q_lens[b] + 1 + r keys. With a prefix all requests share, each token is
        a row of its own (the prefix is read once for all, cascade); else a request's tokens
        are its query rows r (padded to max_q with copies of the last token) over its KV
        gathered once."""
        if _shared_prefix_len(kv_indices, kv_lens - q_lens + 1):
            rows, token_kv_lens = verify_rows(q_lens, kv_lens)
            return self._rows_metadata(kv_indices.index_select(0, rows), token_kv_lens[:, None], device,
                                       num_requests=len(q_lens))
        max_q = int(q_lens.max())
        r = torch.minimum(torch.arange(max_q)[None, :], q_lens[:, None] - 1)  # [B, max_q]
        starts = torch.cumsum(q_lens, 0) - q_lens  # [B] first row of each request in q
        md = self._rows_metadata(kv_indices, kv_lens[:, None] - q_lens[:, None] + 1 + r, device)
        md.q_index = (starts[:, None] + r).reshape(-1).to(device)
        md.out_index = torch.cat([i * max_q + torch.arange(int(n)) for i, n in enumerate(q_lens)]).to(device)
        return md

    def _rows_metadata(self, kv_indices: torch.Tensor, visible: torch.Tensor, device,
                       num_requests: int | None = None) -> PaddedMetadata:
        """kv_indices: int64 [B, max_kv]; visible: int64 [B, R], how many leading keys each of a
        row's R queries sees (B rows of `num_requests` requests, default one each). The keys
        are padded (with slot 0) to a multiple of DECODE_KV_ALIGN, and a shared prefix is cut
        at a multiple of it: the bf16 products then give a row the same bits whatever the
        batch's longest row is, and a verify row the bits of a decode row."""
        pad = -kv_indices.shape[1] % DECODE_KV_ALIGN
        if pad:
            kv_indices = F.pad(kv_indices, (0, pad))
        shared = _shared_prefix_len(kv_indices, visible.min(dim=1).values, num_requests)
        shared_slots = kv_indices[0, :shared].contiguous() if shared else None
        shared_range = None
        if shared and int(shared_slots[-1]) - int(shared_slots[0]) == shared - 1 \
                and bool((shared_slots.diff() == 1).all()):
            shared_range = (int(shared_slots[0]), shared)  # a view of the pool: no gather at all
        tail = kv_indices[:, shared:]  # [B, max_kv - S]
        kj = torch.arange(tail.shape[1])[None, None, :]  # [1, 1, max_kv - S]
        pad = kj >= (visible - shared)[:, :, None]  # [B, R, max_kv - S]
        bias = torch.zeros(pad.shape, dtype=torch.float32).masked_fill_(pad, float("-inf"))
        group = self.num_heads // self.num_kv_heads
        if visible.shape[1] > 1:  # each query row's bias for each head of its group: [B, R * G, max_kv - S]
            bias = bias.repeat_interleave(group, dim=1)
        return PaddedMetadata(self._buffer_rows(tail.reshape(-1)).to(device), tail.shape[1], None, None, None,
                              bias.to(device), None if not shared else self._buffer_rows(shared_slots).to(device),
                              shared_range)

    def forward(self, q, k, v, layer_id, fb):
        pool, md = self.pool, fb.attn_metadata
        pool.write(layer_id, fb.out_cache_loc, k, v)
        if isinstance(md, SlotRowsMetadata):  # q: [R, H, D], one row per new token
            q = q if q.stride(-1) == 1 else q.contiguous()
            out = cpu_attention.paged_decode_attention(q, pool.k_buffers[layer_id], pool.v_buffers[layer_id],
                                                       md.kv_indices, md.kv_lens, self.scale)
            return out.view(q.shape[0], -1)  # [R, H * D]
        hkv, g = self.num_kv_heads, self.num_heads // self.num_kv_heads
        b = md.kv_flat.numel() // (hkv * md.max_kv)  # requests (decode: padded rows included)
        keys = pool.rows(layer_id, False, md.kv_flat).view(hkv, b, md.max_kv, -1)
        values = pool.rows(layer_id, True, md.kv_flat).view(hkv, b, md.max_kv, -1)
        if md.decode_bias is not None:
            if md.q_index is None:  # decode: [B, H, D] -> [Hkv, B, G, D]
                qg = q.reshape(b, hkv, g, -1).transpose(0, 1)
            else:  # verify: token r, head g of request b at row r * G + g: [Hkv, B, max_q * G, D]
                qg = q.index_select(0, md.q_index).view(b, -1, hkv, g, self.head_dim).permute(2, 0, 1, 3, 4)
                qg = qg.reshape(hkv, b, -1, self.head_dim)
            if md.shared_slots is not None:
                if md.shared_range is not None:
                    shared = (pool.slot_range(layer_id, False, *md.shared_range),
                              pool.slot_range(layer_id, True, *md.shared_range))
                else:
                    shared = (pool.rows(layer_id, False, md.shared_slots).view(hkv, -1, self.head_dim),
                              pool.rows(layer_id, True, md.shared_slots).view(hkv, -1, self.head_dim))
                out = self._decode_cascade(qg, shared, keys, values, md.decode_bias)  # shared: [Hkv, S, D] each
            else:
                out = self._decode(qg, keys, values, md.decode_bias)
            if md.q_index is None:
                return out.transpose(0, 1).reshape(b, -1)  # [B, H * D]
            out = out.view(hkv, b, -1, g, self.head_dim).permute(1, 2, 0, 3, 4)  # [B, max_q, Hkv, G, D]
            return out.reshape(-1, self.num_heads * self.head_dim).index_select(0, md.out_index)  # [T, H * D]
        max_q = len(md.q_index) // b
        queries = q.index_select(0, md.q_index).view(b, max_q, self.num_heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(queries, keys.transpose(0, 1), values.transpose(0, 1),
                                             attn_mask=md.mask, is_causal=md.mask is None, scale=self.scale,
                                             enable_gqa=self.num_heads != hkv)
        out = out.transpose(1, 2).reshape(b * max_q, -1)  # [B * max_q, H * D]
        return out.index_select(0, md.out_index)  # [T, H * D]

    def _decode(self, qg, keys, values, bias):
        """qg: [Hkv, B, M, D], the M query rows of each request that read a KV head (its G
        heads; a verify step's tokens x G); keys/values: [Hkv, B, max_kv, D] (contiguous,
        straight from the gather); bias: [B, 1 or M, max_kv] -> [Hkv, B, M, D]. Batch dims
        ordered (Hkv, B) so that no KV copy is needed."""
        scores = torch.matmul(qg, keys.transpose(-1, -2))  # [Hkv, B, M, max_kv]
        probs = torch.softmax(scores.float() * self.scale + bias, dim=-1).to(qg.dtype)
        return torch.matmul(probs, values)  # [Hkv, B, M, D]

    def _decode_cascade(self, qg, shared, keys, values, bias):
        """Like _decode, with a prefix of S keys/values [Hkv, S, D] that all B requests
        share, read once: its scores come from one [B * M, D] x [D, S] product per KV head,
        are joined to each request's tail scores [Hkv, B, M, max_tail] for one softmax, and
        the two parts of the output are summed."""
        hkv, b, m, _ = qg.shape
        shared_k, shared_v = shared
        prefix_scores = torch.matmul(qg.reshape(hkv, b * m, -1), shared_k.transpose(-1, -2))  # [Hkv, B*M, S]
        tail_scores = torch.matmul(qg, keys.transpose(-1, -2))  # [Hkv, B, M, max_tail]
        num_shared = shared_k.shape[1]
        scores = torch.cat((prefix_scores.view(hkv, b, m, num_shared), tail_scores), dim=-1)
        bias = F.pad(bias, (num_shared, 0))  # the shared keys are real for every request
        probs = torch.softmax(scores.float() * self.scale + bias, dim=-1).to(qg.dtype)
        out = torch.matmul(probs[..., :num_shared].reshape(hkv, b * m, num_shared), shared_v).view(hkv, b, m, -1)
        return out + torch.matmul(probs[..., num_shared:], values)  # [Hkv, B, M, D]


def verify_rows(q_lens: torch.Tensor, kv_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A verify step as decode rows: q_lens, kv_lens int64 [B] (new tokens, KV after the
    step) -> (request of each token [T], keys each token's row sees [T]): token j of a
    request sees its prefix and the new tokens up to j."""
    rows = torch.repeat_interleave(torch.arange(len(q_lens)), q_lens)  # [T]
    starts = torch.cumsum(q_lens, 0) - q_lens  # [B] first token of each request
    return rows, kv_lens[rows] - q_lens[rows] + 1 + (torch.arange(len(rows)) - starts[rows])


def _shared_prefix_len(kv_indices: torch.Tensor, kv_lens: torch.Tensor, num_requests: int | None = None) -> int:
    """Leading KV slots that every row of kv_indices [B, max_kv] holds at the same
    positions, short of each row's last (new) token, rounded down to a multiple of
    DECODE_KV_ALIGN; 0 below MIN_SHARED_PREFIX or for a single request (nothing to share;
    `num_requests`: how many the rows belong to, when that is not one each)."""
    limit = int(kv_lens.min()) - 1
    if (num_requests or kv_indices.shape[0]) < 2 or limit < MIN_SHARED_PREFIX:
        return 0
    same = (kv_indices[:, :limit] == kv_indices[:1, :limit]).all(dim=0)  # [limit]
    shared = limit if bool(same.all()) else int(same.logical_not().nonzero()[0])
    shared -= shared % DECODE_KV_ALIGN
    return shared if shared >= MIN_SHARED_PREFIX else 0
