"""Decode attention on CPU read straight from the KV pool's slots (csrc/paged_attention.cpp,
built by cpu_extension.py), with a torch reference of the same contract.

The torch path gathers every row's K and V into a padded copy per layer per step (written,
then read again); this reads each key once from the pool instead, and runs the scores, their
softmax and the weighted sum as one op (float32 inside):

    out = paged_decode_attention(q, k_buf, v_buf, idx, lens, scale)   # [R, H, D]

q [R, H, D] (last dim contiguous), k_buf/v_buf [Hkv, S, D] contiguous, idx int64 [R, W]
(row r's slots in position order), lens int64 [R] <= W. Each row is computed on its own,
so its bits do not depend on the batch around it.
"""

from __future__ import annotations

import torch

from runtime.kernels.cpu_extension import extension


def paged_decode_attention(q, k_buf, v_buf, idx, lens, scale: float) -> torch.Tensor:
    return extension().paged_decode_attention(q, k_buf, v_buf, idx, lens, scale)


def paged_decode_attention_reference(q, k_buf, v_buf, idx, lens, scale: float) -> torch.Tensor:
    probs = torch.softmax(paged_scores_reference(q, k_buf, idx, lens, scale), dim=-1)
    return paged_weighted_sum_reference(probs, v_buf, idx, lens)


def paged_scores_reference(q, k_buf, idx, lens, scale: float) -> torch.Tensor:
    hkv, _, d = k_buf.shape
    r, h, _ = q.shape
    keys = k_buf[:, idx]  # [Hkv, R, W, D]
    qg = q.float().reshape(r, hkv, h // hkv, d).transpose(0, 1)  # [Hkv, R, G, D]
    scores = torch.matmul(qg * scale, keys.float().transpose(-1, -2))  # [Hkv, R, G, W]
    scores = scores.transpose(0, 1).reshape(r, h, -1)
    pad = torch.arange(idx.shape[1])[None, None, :] >= lens[:, None, None]
    return scores.masked_fill(pad, float("-inf"))


def paged_weighted_sum_reference(probs, v_buf, idx, lens) -> torch.Tensor:
    hkv, _, d = v_buf.shape
    r, h, w = probs.shape
    pad = torch.arange(w)[None, None, :] >= lens[:, None, None]
    p = probs.masked_fill(pad, 0.0).reshape(r, hkv, h // hkv, w).transpose(0, 1)  # [Hkv, R, G, W]
    out = torch.matmul(p, v_buf[:, idx].float())  # [Hkv, R, G, D]
    return out.transpose(0, 1).reshape(r, h, d).to(v_buf.dtype)
