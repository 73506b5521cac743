"""Tensor parallelism inside the model: which rank holds which slice, and the collectives.

A model built for rank r of N holds 1/N of every decoder projection: q/k/v and gate/up
column-parallel (its own heads / MLP columns), o_proj and down_proj row-parallel (their
partial outputs summed by an all_reduce), and 1/N of the vocabulary in the embedding and the
output head (vocab-parallel: a lookup outside the rank's rows adds zeros; logits are
gathered). Norms are replicated. With N = 1 every collective is a no-op and the model is the
plain one. The process group is torch.distributed's default one (runtime/engine/tensor_parallel.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1

    def split(self, total: int, what: str) -> int:
        """This rank's share of `total` (heads, MLP columns): an error unless N divides it."""
        if total % self.size:
            raise ValueError(f"--tp-size {self.size} does not divide the model's {total} {what}")
        return total // self.size

    def vocab_rows(self, vocab_size: int) -> tuple[int, int]:
        """(first row, rows per rank) of this rank's vocabulary slice; the last slice is padded
        with zero rows when N does not divide the vocabulary."""
        per_rank = -(-vocab_size // self.size)
        return self.rank * per_rank, per_rank

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of every rank's x, in place (the partial outputs of a row-parallel layer)."""
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def gather_vocab(self, logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """[N, V/size] on each rank -> [N, V] (every rank's slice, in rank order, padding cut)."""
        if self.size == 1:
            return logits
        parts = [torch.empty_like(logits) for _ in range(self.size)]
        dist.all_gather(parts, logits.contiguous())
        return torch.cat(parts, dim=-1)[:, :vocab_size]


SINGLE = TensorParallel()


class VocabParallelEmbedding(nn.Module):
    """This rank's rows of the embedding table; ids of other ranks' rows look up zeros and
    the all_reduce adds the owner's row (exact: x + 0 + ... = x). `weight`: [V/size, hidden]."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.first, rows = tp.vocab_rows(vocab_size)
        self.weight = nn.Parameter(torch.empty(rows, hidden_size), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [T] -> [T, hidden]
        local = ids - self.first
        mine = (local >= 0) & (local < self.weight.shape[0])
        hidden = F.embedding(local.masked_fill(~mine, 0), self.weight)
        return self.tp.all_reduce(hidden.masked_fill(~mine.unsqueeze(-1), 0.0))
