"""The decoder layer's element-wise ops on CPU in one pass each (csrc/elementwise.cpp, built
by cpu_extension.py), with the signatures of the Triton kernels in elementwise.py: the model
runs either set through `LlamaForCausalLM.elementwise` (references: elementwise.py's)."""

from __future__ import annotations

import torch

from runtime.kernels import cpu_extension


def available() -> bool:
    return cpu_extension.has_op("add_rmsnorm") and cpu_extension.has_op("rotary_")


def add_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """x [T, N] -> RMSNorm(x + residual) * weight; with `residual` (updated in place to
    x + residual) returns (normed, residual)."""
    out = torch.ops.radixflow.add_rmsnorm(x, weight, eps, residual)
    return out if residual is None else (out, residual)


def rotary_(x: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D] rotated in place at `positions` (int64 [T])."""
    return torch.ops.radixflow.rotary_(x, cos_table, sin_table, positions)
