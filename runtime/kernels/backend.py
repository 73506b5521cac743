"""Attention backends on the Triton kernels: `triton` (the kernels; CUDA, or CPU under
TRITON_INTERPRET=1) and `triton-reference` (the same metadata and calls on the kernels'
torch references: the engine's parity tests run on it on CPU).

Per step, init_forward_metadata puts on the device what every layer reads:
    decode:  one row per request, kv_indices [B, width] and kv_lens [B];
    verify:  one decode row per new token (token j of a request sees its prefix and the
             new tokens up to j), as TorchNativeBackend does, so a verified token gets
             the attention a plain decode step would give it;
    extend:  q_starts/q_lens/kv_lens [B] for the causal extend kernel.
A decode or verify batch whose rows all start with the same slots (a radix-cache shared
prefix of >= MIN_SHARED_PREFIX tokens) reads that prefix once (`shared_slots`, cascade)
and keeps only the tails in kv_indices. Graph capture (runtime/engine/cuda_graph.py)
builds its own fixed-shape metadata and turns the cascade off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.kernels import attention, available
from runtime.layers.attention import AttentionBackend, _shared_prefix_len, verify_rows


@dataclass
class TritonMetadata:
    kv_indices: torch.Tensor  # int64 [R, width], contiguous: each row's slots (after the shared prefix)
    kv_lens: torch.Tensor  # int32 [R]: keys of each row in kv_indices
    shared_slots: torch.Tensor | None = None  # int64 [S]: slots every decode row reads first
    num_splits: int | None = None  # decode: fixed split count (CUDA graphs), None = from the width
    # extend only:
    q_starts: torch.Tensor | None = None  # int32 [B]: first row of each request in q
    q_lens: torch.Tensor | None = None  # int32 [B]
    max_q: int = 0

    @property
    def decode(self) -> bool:
        return self.q_lens is None


class TritonBackend(AttentionBackend):
    store_kv = staticmethod(attention.store_kv)
    decode_attention = staticmethod(attention.decode_attention)
    extend_attention = staticmethod(attention.extend_attention)

    def __init__(self, pool, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__(pool, num_heads, num_kv_heads, head_dim)
        if pool.k_scales is not None:
            raise ValueError(f"attention backend {self.name()} reads float KV; --kv-cache-dtype int8 needs "
                             "--attention-backend torch_native")
        self._check_device(pool.device)

    @classmethod
    def name(cls) -> str:
        return "triton"

    def _check_device(self, device) -> None:
        if not available(device):
            raise ValueError(f"attention backend triton needs CUDA (this engine is on {device}); on CPU use "
                             "torch_native, or triton-reference, or set TRITON_INTERPRET=1 before start-up")

    def init_forward_metadata(self, fb) -> None:
        device = fb.input_ids.device
        kv_lens = torch.tensor(fb.seq_lens, dtype=torch.int64)  # [B], host
        kv_indices = fb.kv_indices
        if fb.mode.value == "extend" and max(fb.extend_lens) > 1:
            q_lens = torch.tensor(fb.extend_lens, dtype=torch.int64)
            q_starts = torch.cumsum(q_lens, 0) - q_lens
            fb.attn_metadata = TritonMetadata(
                kv_indices.contiguous(), _int32(kv_lens, device), q_starts=_int32(q_starts, device),
                q_lens=_int32(q_lens, device), max_q=int(q_lens.max()))
            return
        num_requests = len(fb.seq_lens)
        if fb.mode.value == "verify":  # one decode row per token
            rows, kv_lens = verify_rows(torch.tensor(fb.extend_lens, dtype=torch.int64), kv_lens)  # [T] each
            kv_indices = kv_indices.index_select(0, rows.to(kv_indices.device))
        shared = _shared_prefix_len(kv_indices, kv_lens, num_requests)
        shared_slots = kv_indices[0, :shared].contiguous() if shared else None
        fb.attn_metadata = TritonMetadata(kv_indices[:, shared:].contiguous(), _int32(kv_lens - shared, device),
                                          shared_slots)

    def forward(self, q, k, v, layer_id, fb):
        md = fb.attn_metadata
        k_buf, v_buf = self.pool.k_buffers[layer_id], self.pool.v_buffers[layer_id]
        self.store_kv(k_buf, v_buf, fb.out_cache_loc, k, v)
        if md.decode:
            out = self.decode_attention(q, k_buf, v_buf, md.kv_indices, md.kv_lens, self.scale,
                                        shared_slots=md.shared_slots, num_splits=md.num_splits)
        else:
            out = self.extend_attention(q, k_buf, v_buf, md.kv_indices, md.kv_lens, md.q_starts, md.q_lens,
                                        md.max_q, self.scale)
        return out.view(q.shape[0], -1)  # [T, H * D]


class TritonReferenceBackend(TritonBackend):
    """TritonBackend with every kernel replaced by its torch reference (any device)."""

    store_kv = staticmethod(attention.store_kv_reference)
    decode_attention = staticmethod(attention.decode_attention_reference)
    extend_attention = staticmethod(attention.extend_attention_reference)

    @classmethod
    def name(cls) -> str:
        return "triton-reference"

    def _check_device(self, device) -> None:
        pass  # torch ops run anywhere


def _int32(values: torch.Tensor, device) -> torch.Tensor:
    return values.to(device=device, dtype=torch.int32)
