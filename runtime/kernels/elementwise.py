"""Element-wise kernels (Triton) with torch references: residual add + RMSNorm in one pass,
rotary embedding in place, the packed grammar bitmask applied to logits.

Numerics follow the model's torch layers (runtime/layers/norm.py, rotary.py): RMSNorm
normalises in float32, rounds to the input dtype, then scales by the weight; rotary
computes in float32 and rounds once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime.kernels import check_device, next_power_of_2

# ----------------------------------------------------------------------------- RMSNorm


@triton.jit
def _add_rmsnorm_kernel(X, Residual, W, Out, stride_x, stride_r, stride_o, n, eps,
                        HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(Residual + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32))
        x = x.to(Residual.dtype.element_ty)
        tl.store(Residual + row * stride_r + cols, x, mask=mask)  # the new residual stream
    xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n + eps)
    normed = (xf * inv).to(Out.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * stride_o + cols, (normed * w).to(Out.dtype.element_ty), mask=mask)


def add_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """x [T, N] -> RMSNorm(x + residual) * weight, [T, N] in x's dtype. With `residual`
    ([T, N], updated in place to x + residual) returns (normed, residual): the decoder
    layer's `hidden = hidden + sublayer(...)` followed by the next norm, one read of each."""
    check_device(x, weight)
    assert x.dim() == 2 and x.stride(-1) == 1 and weight.shape == (x.shape[1],), "x [T, N], weight [N]"
    if residual is not None:
        assert residual.shape == x.shape and residual.stride(-1) == 1 and residual.dtype == x.dtype
    out = torch.empty_like(x)
    if x.shape[0]:
        _add_rmsnorm_kernel[(x.shape[0],)](
            x, residual if residual is not None else x, weight, out, x.stride(0),
            residual.stride(0) if residual is not None else 0, out.stride(0), x.shape[1], eps,
            HAS_RESIDUAL=residual is not None, BLOCK=next_power_of_2(x.shape[1]))
    return out if residual is None else (out, residual)


def add_rmsnorm_reference(x, weight, eps, residual=None):
    if residual is not None:
        residual.add_(x)
        x = residual
    normed = torch.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)
    out = weight.to(x.dtype) * normed
    return out if residual is None else (out, residual)


# ----------------------------------------------------------------------------- rotary


@triton.jit
def _rotary_kernel(X, Cos, Sin, Positions, stride_xt, stride_xh, stride_c, num_heads,
                   HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Program t: every head of token t, rotate-half layout (x1, x2) -> (x1 c - x2 s, x2 c + x1 s)."""
    t = tl.program_id(0)
    pos = tl.load(Positions + t)
    h = tl.arange(0, BLOCK_H)
    j = tl.arange(0, BLOCK_HALF)
    mask = (h < num_heads)[:, None] & (j < HALF)[None, :]
    cos = tl.load(Cos + pos * stride_c + j, mask=j < HALF, other=0.0)[None, :]
    sin = tl.load(Sin + pos * stride_c + j, mask=j < HALF, other=0.0)[None, :]
    ptr = X + t * stride_xt + h[:, None] * stride_xh + j[None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptr, (x1 * cos - x2 * sin).to(X.dtype.element_ty), mask=mask)
    tl.store(ptr + HALF, (x2 * cos + x1 * sin).to(X.dtype.element_ty), mask=mask)


def rotary_(x: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D] (last dim contiguous; q and k may go through together) rotated in
    place at `positions` (int64 [T]); cos/sin tables float32 [max_positions, D / 2]."""
    check_device(x, cos_table, positions)
    assert x.dim() == 3 and x.stride(-1) == 1 and x.shape[2] % 2 == 0, "x [T, heads, D], D even"
    half = x.shape[2] // 2
    assert cos_table.shape == sin_table.shape and cos_table.shape[1] == half and cos_table.stride(1) == 1
    assert positions.shape == (x.shape[0],)
    if x.shape[0]:
        _rotary_kernel[(x.shape[0],)](
            x, cos_table, sin_table, positions, x.stride(0), x.stride(1), cos_table.stride(0), x.shape[1],
            HALF=half, BLOCK_H=next_power_of_2(x.shape[1]), BLOCK_HALF=next_power_of_2(half))
    return x


def rotary_reference_(x, cos_table, sin_table, positions):
    cos, sin = cos_table[positions][:, None], sin_table[positions][:, None]  # [T, 1, D/2]
    x1, x2 = x.float().chunk(2, dim=-1)
    x.copy_(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1))
    return x


# ----------------------------------------------------------------------------- grammar bitmask


@triton.jit
def _bitmask_kernel(Logits, Bitmask, stride_l, stride_m, vocab, BLOCK: tl.constexpr):
    """Program (row, block of tokens): -inf where the token's bit is 0 (runtime/constrained/bitmask.py)."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < vocab
    words = tl.load(Bitmask + row * stride_m + cols // 32, mask=mask, other=-1)
    banned = ((words >> (cols % 32)) & 1) == 0
    tl.store(Logits + row * stride_l + cols, tl.full([BLOCK], float("-inf"), Logits.dtype.element_ty),
             mask=mask & banned)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """logits [B, V] in place, bitmask int32 [B, >= ceil(V / 32)] on the same device."""
    check_device(logits, bitmask)
    assert logits.dim() == 2 and logits.stride(-1) == 1, "logits [B, V], last dim contiguous"
    assert bitmask.dtype == torch.int32 and bitmask.shape[0] == logits.shape[0]
    assert bitmask.shape[1] * 32 >= logits.shape[1] and bitmask.stride(-1) == 1
    block = 1024
    if logits.shape[0]:
        _bitmask_kernel[(logits.shape[0], triton.cdiv(logits.shape[1], block))](
            logits, bitmask, logits.stride(0), bitmask.stride(0), logits.shape[1], BLOCK=block)
