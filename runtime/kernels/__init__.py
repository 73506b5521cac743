"""Triton kernels for the GPU path, each beside a plain-torch reference of the same contract.

Modules: `attention` (K/V store into pool slots, split-K decode over slot lists, extend,
shared-prefix cascade), `elementwise` (fused residual add + RMSNorm, rotary, grammar
bitmask on logits). Every public function checks shapes and strides, then launches; its
`*_reference` twin computes the same thing with torch ops (tests compare the two; the
`triton-reference` attention backend runs the engine on the references).

On CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set by the tests
before triton is imported): slow, numerically the same program. `available()` says whether
they can run here at all.
"""

from __future__ import annotations

import os

import torch


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device | str) -> bool:
    """Triton kernels run on CUDA tensors, or on CPU tensors under the interpreter."""
    return torch.device(device).type == "cuda" or interpreted()


def check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if not available(t.device):
            raise RuntimeError(f"Triton kernels need CUDA tensors (got {t.device}); on CPU set TRITON_INTERPRET=1 "
                               "before importing triton (tests) or use --attention-backend torch_native")


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
