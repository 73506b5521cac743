"""Linear layers whose weights are fused from several checkpoint tensors.

A fused layer declares its shards as data (name -> output rows); the loader calls
`load_shard` with the checkpoint tensor for each shard.
"""

import torch
from torch import nn

from runtime.config import cpu_has_fast_bf16


class MergedLinear(nn.Linear):
    """One matmul for several projections stacked along the output dim (e.g. q|k|v)."""

    def __init__(self, in_features: int, shard_sizes: dict[str, int], bias: bool) -> None:
        super().__init__(in_features, sum(shard_sizes.values()), bias=bias)
        self.shard_offsets: dict[str, tuple[int, int]] = {}
        start = 0
        for name, size in shard_sizes.items():
            self.shard_offsets[name] = (start, size)
            start += size

    @torch.no_grad()
    def load_shard(self, shard: str, param_name: str, tensor: torch.Tensor) -> None:
        start, size = self.shard_offsets[shard]
        target = getattr(self, param_name)  # "weight" [out, in] or "bias" [out]
        if tensor.shape[0] != size:
            raise ValueError(f"shard {shard}.{param_name}: expected {size} rows, got {tuple(tensor.shape)}")
        target[start:start + size].copy_(tensor)


def onednn_packing_available(dtype: torch.dtype, device: str) -> bool:
    """oneDNN's reordered-weight linear on CPU. bf16: it matched F.linear bit for bit in our
    measurements, and needs AVX512 (bw/vl/dq) or AVX-NE-CONVERT (not on every x86 CPU).
    float32: not bitwise equal to F.linear (~1e-6 relative), but each row's bits do not depend
    on the other rows, and on an AVX2 EPYC (2 threads) it is 1.9x faster for the default
    model's [49152, 576] head at one row and 2-3x at 4-16 rows (a verify step's), where
    F.linear's small-row GEMM reaches a fraction of the bandwidth."""
    if device != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_has_fast_bf16())


class OneDNNLinear(nn.Module):
    """y = x W^T + b with W reordered once, at load, into oneDNN's blocked layout.

    `F.linear` on a plain [out, in] bf16 weight reaches ~20 GB/s of weight reads on an
    AVX512 CPU in decode-sized GEMVs; the reordered weight reaches ~35 GB/s (1.6-1.8x faster
    at 1-64 rows, about even at prefill sizes); float32: see onednn_packing_available. The dense weight is dropped: the
    reordered copy is the only one (an opaque mkldnn tensor, the same bytes)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> [..., out]
        if x.numel() == self.in_features:  # one row: oneDNN's one-row kernel sums k in another order than
            # its kernel for 2+ rows (AVX512, in > 1024), so a row's bits would depend on its batch; run it as 2
            out = torch.ops.mkldnn._linear_pointwise(x.reshape(1, -1).expand(2, -1), self.packed_weight, self.bias,
                                                     "none", [], "")
            return out[:1].reshape(*x.shape[:-1], self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears_onednn(model: nn.Module) -> int:
    """Replace every nn.Linear under `model` (MergedLinear included) by an OneDNNLinear,
    once the weights are loaded; returns how many were replaced."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, OneDNNLinear(child.weight, child.bias))
                count += 1
    return count
