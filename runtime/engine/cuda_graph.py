"""Decode steps replayed from CUDA graphs: the host launches one graph per step instead of
a few hundred kernels (at batch 1 a small model's step is shorter than its launches).

One graph per padded batch size (CAPTURE_SIZES up to --cuda-graph-max-bs), all reading
static buffers that each step fills in place:
    input_ids, positions, out_cache_loc: int64 [max_bs]
    kv_indices: int64 [max_bs, context_len]   (row b's slots; only kv_lens[b] are read)
    kv_lens:    int32 [max_bs]
Rows past the batch are padding: token 0 at position 0, writing and reading slot 0 (the
pool's reserved padding page), kv_lens 1. The decode kernel's grid does not depend on the
lengths and its split count is fixed from context_len, so a graph is valid for any
lengths; the shared-prefix cascade is off (its launch depends on the batch). The graphs
cover the model's forward to the final hidden states; logits, sampling and grammar masks
run after it on the device, and reading the sampled ids is the step's one host sync.

`eager=True` runs the same static-buffer forward without capturing (any device): the CPU
tests use it to check the padding and fixed metadata that a captured graph replays.
"""

from __future__ import annotations

import logging

import torch

from runtime.engine.forward_batch import ForwardBatch, ForwardMode
from runtime.kernels.attention import default_num_splits
from runtime.kernels.backend import TritonBackend, TritonMetadata

logger = logging.getLogger(__name__)

CAPTURE_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)


class DecodeGraphs:
    def __init__(self, model, attn: TritonBackend, max_bs: int, context_len: int, device, eager: bool = False):
        if not isinstance(attn, TritonBackend):
            raise ValueError(f"CUDA graphs need a triton attention backend, not {type(attn).__name__}")
        self.model, self.attn, self.eager = model, attn, eager
        self.sizes = [s for s in CAPTURE_SIZES if s < max_bs] + [max_bs]
        n = self.sizes[-1]
        with torch.inference_mode():
            self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
            self.positions = torch.zeros(n, dtype=torch.int64, device=device)
            self.out_cache_loc = torch.zeros(n, dtype=torch.int64, device=device)
            self.kv_indices = torch.zeros((n, context_len), dtype=torch.int64, device=device)
            self.kv_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.num_splits = default_num_splits(context_len)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # batch size -> the graph's hidden states [bs, hidden]
        if not eager:
            self._capture_all()

    @property
    def max_bs(self) -> int:
        return self.sizes[-1]

    def can_run(self, fb: ForwardBatch) -> bool:
        return fb.mode == ForwardMode.DECODE and fb.batch_size <= self.max_bs

    def _forward(self, bs: int) -> torch.Tensor:
        """The model over the first bs rows of the static buffers -> hidden [bs, hidden]."""
        metadata = TritonMetadata(self.kv_indices[:bs], self.kv_lens[:bs], num_splits=self.num_splits)
        fb = ForwardBatch(ForwardMode.DECODE, self.input_ids[:bs], self.positions[:bs], self.out_cache_loc[:bs],
                          extend_lens=[1] * bs, seq_lens=[1] * bs, kv_indices=self.kv_indices[:bs],
                          logits_indices=None, attn_metadata=metadata)  # the layers read only what they need
        return self.model(fb.input_ids, fb.positions, fb, self.attn)

    @torch.inference_mode()
    def _capture_all(self) -> None:
        pool = None
        stream = torch.cuda.Stream()
        for bs in reversed(self.sizes):  # largest first: the smaller graphs reuse its memory pool
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up off the capture: compiles the kernels, settles the allocator
                for _ in range(2):
                    self._forward(bs)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bs] = self._forward(bs)
            pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize()
        logger.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def run(self, fb: ForwardBatch) -> torch.Tensor:
        """A decode batch of B <= max_bs rows -> final hidden states [B, hidden]."""
        b = fb.batch_size
        bs = next(s for s in self.sizes if s >= b)
        width = fb.kv_indices.shape[1]
        self.input_ids[:b].copy_(fb.input_ids)
        self.positions[:b].copy_(fb.positions)
        self.out_cache_loc[:b].copy_(fb.out_cache_loc)
        self.kv_indices[:b, :width].copy_(fb.kv_indices)
        self.kv_lens[:b].copy_(torch.tensor(fb.seq_lens, dtype=torch.int32))
        if bs > b:  # padding rows: token 0 at position 0 on slot 0, one key
            for buffer in (self.input_ids, self.positions, self.out_cache_loc):
                buffer[b:bs].zero_()
            self.kv_indices[b:bs, 0].zero_()
            self.kv_lens[b:bs].fill_(1)
        if self.eager:
            return self._forward(bs)[:b]
        self.graphs[bs].replay()
        return self.outputs[bs][:b]
