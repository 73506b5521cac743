"""Attention kernels over the KV pool's slots (Triton), each with a torch reference.

Layouts (the KVPool's, runtime/cache/kv_pool.py):
    k_buf, v_buf: [Hkv, num_slots, D] per layer, contiguous; a token's K/V live at one slot.
    kv_indices:   int64 [B, >= max(kv_lens)]: request b's keys are slots kv_indices[b, :kv_lens[b]],
                  in position order (any page size: a page is a run of consecutive slots).
    q:            [B or T, H, D], last dim contiguous (a view of the fused q|k projection is fine).
Query head h reads KV head h // G, G = H / Hkv (grouped-query attention).

decode_attention: one query per row, flash-decoding: each (row, KV head) is split over
NUM_SPLITS ranges of its keys, each range gives a partial output and its log-sum-exp
(`_decode_split_kernel`), `_combine_kernel` merges them. The grid does not depend on the
lengths, which are read on the device, so a CUDA graph can replay it for any lengths.
With `shared_slots` (a prefix every row has, the radix cache gave them the same slots),
`_shared_prefix_kernel` reads that prefix once for all rows of a KV head and adds its
partials beside the per-row ones (cascade attention); kv_indices then hold only the tails.

extend_attention: new tokens of each request over its cached prefix plus themselves,
causal (query i of a request with prefix P sees keys 0 .. P + i), flash-attention style
over blocks of keys gathered through kv_indices. The new tokens' K/V must be stored first.

Softmax and accumulation run in float32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime.kernels import check_device, interpreted, next_power_of_2

MAX_SPLITS = 16
KEYS_PER_SPLIT = 256  # fewer splits for short rows: a split below this has too little work


def default_num_splits(max_kv: int) -> int:
    return max(1, min(MAX_SPLITS, triton.cdiv(max_kv, KEYS_PER_SPLIT)))


# ----------------------------------------------------------------------------- store


@triton.jit
def _store_kv_kernel(K, V, KBuf, VBuf, Slots, stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_bh, stride_bs, D: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    mask = d < D
    slot = tl.load(Slots + t)
    k = tl.load(K + t * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(V + t * stride_vt + h * stride_vh + d, mask=mask)
    tl.store(KBuf + h * stride_bh + slot * stride_bs + d, k.to(KBuf.dtype.element_ty), mask=mask)
    tl.store(VBuf + h * stride_bh + slot * stride_bs + d, v.to(VBuf.dtype.element_ty), mask=mask)


def _upcast(q: torch.Tensor) -> bool:
    """Products in float32 for 16-bit inputs under the interpreter (its tl.dot misreads bf16)."""
    return interpreted() and q.dtype != torch.float32


def _precision(q: torch.Tensor) -> str:
    """tl.dot's input precision: exact float32 products for float32 inputs (the GPU's
    default for them is TF32, ~1e-3 off: float32 runs are the parity tests'), else the default."""
    return "ieee" if q.dtype == torch.float32 or _upcast(q) else "tf32"


def _check_pool(k_buf: torch.Tensor, v_buf: torch.Tensor) -> None:
    assert k_buf.dim() == 3 and k_buf.shape == v_buf.shape, "k_buf, v_buf: [Hkv, num_slots, D], same shape"
    assert k_buf.is_contiguous() and v_buf.is_contiguous(), "pool buffers must be contiguous"
    assert k_buf.dtype == v_buf.dtype and k_buf.dtype.is_floating_point, "float pool buffers (no int8 KV here)"


def store_kv(k_buf, v_buf, slots, k, v) -> None:
    """k, v: [T, Hkv, D] (last dim contiguous) -> k_buf/v_buf[:, slots[t]] (slots int64 [T])."""
    _check_pool(k_buf, v_buf)
    check_device(k_buf, k, slots)
    hkv, _, d = k_buf.shape
    assert k.shape == v.shape == (slots.shape[0], hkv, d), f"k/v {tuple(k.shape)} vs [T={slots.shape[0]}, {hkv}, {d}]"
    assert k.stride(-1) == 1 and v.stride(-1) == 1, "k/v: last dim contiguous"
    if slots.shape[0] == 0:
        return
    _store_kv_kernel[(slots.shape[0], hkv)](
        k, v, k_buf, v_buf, slots.contiguous(), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_buf.stride(0), k_buf.stride(1), D=d, BLOCK_D=next_power_of_2(d))


def store_kv_reference(k_buf, v_buf, slots, k, v) -> None:
    k_buf.index_copy_(1, slots, k.transpose(0, 1).to(k_buf.dtype))
    v_buf.index_copy_(1, slots, v.transpose(0, 1).to(v_buf.dtype))


# ----------------------------------------------------------------------------- decode


@triton.jit
def _attend_key_block(q, KBuf, VBuf, slots, valid, head_offset, stride_bs, d, m, total, acc, scale,
                      D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """One block of keys (pool slots `slots`, `valid` [BLOCK_N]) into the running softmax of
    queries q [rows, BLOCK_D]: max m, sum total [rows], unnormalised output acc [rows, BLOCK_D]."""
    kv_ptr = head_offset + slots[:, None] * stride_bs + d[None, :]
    kv_mask = valid[:, None] & (d < D)[None, :]
    k = tl.load(KBuf + kv_ptr, mask=kv_mask, other=0.0)
    v = tl.load(VBuf + kv_ptr, mask=kv_mask, other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [rows, BLOCK_N] float32
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    p = tl.exp(s - m_new[:, None])
    alpha = tl.exp(m - m_new)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, total * alpha + tl.sum(p, 1), acc


@triton.jit
def _decode_split_kernel(Q, KBuf, VBuf, KvIdx, KvLens, MidO, MidLse,
                         stride_qb, stride_qh, stride_bh, stride_bs, stride_ib,
                         stride_ob, stride_oh, stride_os, stride_lb, stride_lh, scale,
                         G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, UPCAST: tl.constexpr,
                         PRECISION: tl.constexpr):
    """Program (row b, KV head, split): the G query heads of that KV head over one range of
    row b's keys -> MidO[b, heads, split] (normalised partial output), MidLse[b, heads, split]."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    kv_len = tl.load(KvLens + b).to(tl.int32)
    per_split = tl.cdiv(tl.cdiv(kv_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, kv_len)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kvh * G + g
    q_mask = (g < G)[:, None] & (d < D)[None, :]
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        valid = offs < end
        slots = tl.load(KvIdx + b * stride_ib + offs, mask=valid, other=0)
        m, total, acc = _attend_key_block(q, KBuf, VBuf, slots, valid, kvh * stride_bh, stride_bs, d, m, total, acc,
                                          scale, D, UPCAST, PRECISION)
    nonempty = total > 0
    out = acc / tl.where(nonempty, total, 1.0)[:, None]
    lse = tl.where(nonempty, m + tl.log(tl.where(nonempty, total, 1.0)), float("-inf"))
    o_ptr = MidO + b * stride_ob + heads[:, None] * stride_oh + split * stride_os + d[None, :]
    tl.store(o_ptr, out, mask=q_mask)
    tl.store(MidLse + b * stride_lb + heads * stride_lh + split, lse, mask=g < G)


@triton.jit
def _shared_prefix_kernel(Q, KBuf, VBuf, Shared, num_shared, num_rows, MidO, MidLse,
                          stride_qb, stride_qh, stride_bh, stride_bs,
                          stride_ob, stride_oh, stride_os, stride_lb, stride_lh, scale, first_split,
                          G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, UPCAST: tl.constexpr,
                         PRECISION: tl.constexpr):
    """Program (KV head, block of BLOCK_M query rows, split): rows r = b * G + g of every
    request's query heads of that KV head, over one range of the shared slots; each key
    block is loaded once for all those rows. Writes split `first_split + split`."""
    kvh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    split = tl.program_id(2)
    per_split = tl.cdiv(tl.cdiv(num_shared, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, num_shared)
    b = rows // G
    heads = kvh * G + rows % G
    d = tl.arange(0, BLOCK_D)
    row_mask = rows < num_rows
    q_mask = row_mask[:, None] & (d < D)[None, :]
    q = tl.load(Q + b[:, None] * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        valid = offs < end
        slots = tl.load(Shared + offs, mask=valid, other=0)
        m, total, acc = _attend_key_block(q, KBuf, VBuf, slots, valid, kvh * stride_bh, stride_bs, d, m, total, acc,
                                          scale, D, UPCAST, PRECISION)
    nonempty = total > 0
    out = acc / tl.where(nonempty, total, 1.0)[:, None]
    lse = tl.where(nonempty, m + tl.log(tl.where(nonempty, total, 1.0)), float("-inf"))
    s_index = first_split + split
    o_ptr = MidO + b[:, None] * stride_ob + heads[:, None] * stride_oh + s_index * stride_os + d[None, :]
    tl.store(o_ptr, out, mask=q_mask)
    tl.store(MidLse + b * stride_lb + heads * stride_lh + s_index, lse, mask=row_mask)


@triton.jit
def _combine_kernel(MidO, MidLse, Out, stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
                    stride_outb, stride_outh, D: tl.constexpr, BLOCK_D: tl.constexpr,
                    NUM_PARTS: tl.constexpr, BLOCK_P: tl.constexpr):
    """Program (row b, query head h): the partial outputs weighted by exp(lse - max lse)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    p = tl.arange(0, BLOCK_P)
    d = tl.arange(0, BLOCK_D)
    lse = tl.load(MidLse + b * stride_lb + h * stride_lh + p, mask=p < NUM_PARTS, other=float("-inf"))
    weights = tl.exp(lse - tl.max(lse, 0))  # [BLOCK_P]; empty parts weigh 0
    mask = (p < NUM_PARTS)[:, None] & (d < D)[None, :]
    parts = tl.load(MidO + b * stride_ob + h * stride_oh + p[:, None] * stride_os + d[None, :], mask=mask, other=0.0)
    out = tl.sum(parts * weights[:, None], 0) / tl.sum(weights, 0)
    tl.store(Out + b * stride_outb + h * stride_outh + d, out.to(Out.dtype.element_ty), mask=d < D)


def _check_queries(q, k_buf, v_buf):
    _check_pool(k_buf, v_buf)
    check_device(q, k_buf)
    assert q.dim() == 3 and q.stride(-1) == 1, "q: [rows, H, D], last dim contiguous"
    hkv, _, d = k_buf.shape
    assert q.shape[2] == d and q.shape[1] % hkv == 0, f"q {tuple(q.shape)} vs KV heads {hkv} of dim {d}"
    assert q.dtype == k_buf.dtype, f"q is {q.dtype}, the pool {k_buf.dtype}"
    return q.shape[1] // hkv


def decode_attention(q, k_buf, v_buf, kv_indices, kv_lens, scale: float, shared_slots=None,
                     num_splits: int | None = None, out=None) -> torch.Tensor:
    """q [B, H, D]; row b attends slots shared_slots (if given) then kv_indices[b, :kv_lens[b]]
    -> out [B, H, D] (q's dtype). kv_lens: int32/int64 [B] on q's device, each >= 1 unless
    shared_slots cover the row. num_splits: default from kv_indices' width (fixed for a
    CUDA graph: the lengths may then change under a captured launch)."""
    g = _check_queries(q, k_buf, v_buf)
    b, h, d = q.shape
    assert kv_indices.dim() == 2 and kv_indices.shape[0] == b and kv_indices.stride(1) == 1, "kv_indices [B, max_kv]"
    assert kv_lens.shape == (b,), "kv_lens [B]"
    num_splits = num_splits or default_num_splits(kv_indices.shape[1])
    num_shared = 0 if shared_slots is None else shared_slots.shape[0]
    shared_splits = default_num_splits(num_shared) if num_shared else 0
    parts = num_splits + shared_splits
    mid_o = torch.empty((b, h, parts, d), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty((b, h, parts), dtype=torch.float32, device=q.device)
    out = torch.empty((b, h, d), dtype=q.dtype, device=q.device) if out is None else out
    if b == 0:
        return out
    block_d, block_n = next_power_of_2(d), 32
    _decode_split_kernel[(b, k_buf.shape[0], num_splits)](
        q, k_buf, v_buf, kv_indices, kv_lens, mid_o, mid_lse,
        q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), kv_indices.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1), scale,
        G=g, D=d, BLOCK_G=max(16, next_power_of_2(g)), BLOCK_D=block_d, BLOCK_N=block_n, NUM_SPLITS=num_splits,
        UPCAST=_upcast(q), PRECISION=_precision(q))
    if num_shared:
        block_m = 32
        _shared_prefix_kernel[(k_buf.shape[0], triton.cdiv(b * g, block_m), shared_splits)](
            q, k_buf, v_buf, shared_slots.contiguous(), num_shared, b * g, mid_o, mid_lse,
            q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1),
            mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1), scale,
            num_splits, G=g, D=d, BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_N=block_n, NUM_SPLITS=shared_splits,
            UPCAST=_upcast(q), PRECISION=_precision(q))
    _combine_kernel[(b, h)](
        mid_o, mid_lse, out, mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0),
        mid_lse.stride(1), out.stride(0), out.stride(1), D=d, BLOCK_D=block_d, NUM_PARTS=parts,
        BLOCK_P=next_power_of_2(parts))
    return out


def _attend_reference(q, keys, values, scale, mask=None):
    """q [N, H, D], keys/values [Hkv, S, D] -> [N, H, D] in float32 (mask: bool [N, S])."""
    hkv = keys.shape[0]
    g = q.shape[1] // hkv
    k = keys.float().repeat_interleave(g, dim=0)  # [H, S, D]
    v = values.float().repeat_interleave(g, dim=0)
    scores = torch.einsum("nhd,hsd->hns", q.float(), k) * scale  # [H, N, S]
    if mask is not None:
        scores = scores.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("hns,hsd->nhd", torch.softmax(scores, dim=-1), v)


def decode_attention_reference(q, k_buf, v_buf, kv_indices, kv_lens, scale: float, shared_slots=None,
                               num_splits: int | None = None, out=None) -> torch.Tensor:
    rows = []
    for b, n in enumerate(kv_lens.tolist()):
        slots = kv_indices[b, :n]
        if shared_slots is not None:
            slots = torch.cat((shared_slots, slots))
        rows.append(_attend_reference(q[b:b + 1], k_buf[:, slots], v_buf[:, slots], scale))
    result = torch.cat(rows).to(q.dtype) if rows else torch.empty_like(q)
    return result if out is None else out.copy_(result)


# ----------------------------------------------------------------------------- extend


@triton.jit
def _extend_kernel(Q, KBuf, VBuf, Out, KvIdx, KvLens, QStarts, QLens,
                   stride_qt, stride_qh, stride_bh, stride_bs, stride_ib, stride_ot, stride_oh, scale,
                   G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Program (request b, query head h, block of BLOCK_M of its new tokens)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    q_len = tl.load(QLens + b).to(tl.int32)
    first = tl.program_id(2) * BLOCK_M
    if first >= q_len:
        return
    q_start = tl.load(QStarts + b).to(tl.int32)
    kv_len = tl.load(KvLens + b).to(tl.int32)
    prefix = kv_len - q_len
    i = first + tl.arange(0, BLOCK_M)  # new-token index within the request
    d = tl.arange(0, BLOCK_D)
    q_mask = (i < q_len)[:, None] & (d < D)[None, :]
    q = tl.load(Q + (q_start + i)[:, None] * stride_qt + h * stride_qh + d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    kvh = h // G
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    last_key = tl.minimum(prefix + first + BLOCK_M, kv_len)  # keys past it are masked for the whole block
    for n0 in range(0, last_key, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        valid = offs < last_key
        slots = tl.load(KvIdx + b * stride_ib + offs, mask=valid, other=0)
        kv_ptr = kvh * stride_bh + slots[:, None] * stride_bs + d[None, :]
        kv_mask = valid[:, None] & (d < D)[None, :]
        k = tl.load(KBuf + kv_ptr, mask=kv_mask, other=0.0)
        v = tl.load(VBuf + kv_ptr, mask=kv_mask, other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [BLOCK_M, BLOCK_N]
        allowed = valid[None, :] & (offs[None, :] <= (prefix + i)[:, None])
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m - m_safe)
        total = total * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    out = acc / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(Out + (q_start + i)[:, None] * stride_ot + h * stride_oh + d[None, :], out.to(Out.dtype.element_ty),
             mask=q_mask)


def extend_attention(q, k_buf, v_buf, kv_indices, kv_lens, q_starts, q_lens, max_q: int, scale: float,
                     out=None) -> torch.Tensor:
    """q [T, H, D]: request b's new tokens are rows q_starts[b] .. + q_lens[b], at positions
    kv_lens[b] - q_lens[b] .. kv_lens[b] - 1 of its keys kv_indices[b, :kv_lens[b]] (their K/V
    already stored) -> out [T, H, D]. q_starts, q_lens, kv_lens: int [B] on q's device;
    max_q: the largest q_len (sizes the grid)."""
    g = _check_queries(q, k_buf, v_buf)
    t, h, d = q.shape
    b = kv_lens.shape[0]
    assert kv_indices.dim() == 2 and kv_indices.shape[0] == b and kv_indices.stride(1) == 1, "kv_indices [B, max_kv]"
    assert q_starts.shape == q_lens.shape == (b,), "q_starts, q_lens [B]"
    out = torch.empty((t, h, d), dtype=q.dtype, device=q.device) if out is None else out
    if t == 0:
        return out
    block_m = 32 if max_q > 16 else 16
    _extend_kernel[(b, h, triton.cdiv(max_q, block_m))](
        q, k_buf, v_buf, out, kv_indices, kv_lens, q_starts, q_lens,
        q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), kv_indices.stride(0),
        out.stride(0), out.stride(1), scale, G=g, D=d, BLOCK_M=block_m, BLOCK_D=next_power_of_2(d), BLOCK_N=32,
        UPCAST=_upcast(q), PRECISION=_precision(q))
    return out


def extend_attention_reference(q, k_buf, v_buf, kv_indices, kv_lens, q_starts, q_lens, max_q: int, scale: float,
                               out=None) -> torch.Tensor:
    result = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for b, (start, n, kv) in enumerate(zip(q_starts.tolist(), q_lens.tolist(), kv_lens.tolist())):
        slots = kv_indices[b, :kv]
        causal = torch.arange(kv)[None, :] <= (kv - n + torch.arange(n))[:, None]  # [n, kv]
        rows = _attend_reference(q[start:start + n], k_buf[:, slots], v_buf[:, slots], scale, causal.to(q.device))
        result[start:start + n] = rows.to(q.dtype)
    return result if out is None else out.copy_(result)


