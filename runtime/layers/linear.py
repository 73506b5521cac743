"""Linear layers whose weights are fused from several checkpoint tensors.

A fused layer declares its shards as data (name -> output rows); the loader calls
`load_shard` with the checkpoint tensor for each shard.
"""

import torch
from torch import nn


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
