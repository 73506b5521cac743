"""Weight-only quantized linear layers for CPU decoding (int8 per channel, int4 per group).

Decode reads every weight once per step, so on CPU its time follows the weights' bytes.
Two layouts, each run by a torch CPU kernel at decode sizes and by dequantize-then-matmul
above KERNEL_MAX_ROWS rows (the kernels' time grows with the rows much faster than a
matmul's: measured on this CPU, `_weight_int4pack_mm_for_cpu` on a [3072, 576] weight
took 85 us at 1 row and 750 us at 16, bf16 oneDNN 270 us and 170 us):

  int8: w[n, k] = q[n, k] * scale[n]            q int8 in [-127, 127], symmetric per output row
        kernel `aten._weight_int8pack_mm(x, q, scale)`
  int4: w[n, k] = (q[n, k] - 8) * s[g, n] + z[g, n]   q in [0, 15], g = k // group_size
        kernel `aten._weight_int4pack_mm_for_cpu(x, packed, group_size, stack((s, z), -1))`
        min/max per group: s = (max - min) / 15, z = min + 8 s. For a GGUF Q4_1 tensor
        (w = q d + m per block of 32, with q = 0 and q = 15 in every block by llama.cpp's
        quantizer) group 32 gives back exactly its q, d and m: the int4 model is the one
        llama.cpp serves, up to s and z held in the activation dtype (bf16: 8 bits).

Quantize from float32 weights (the engine loads a checkpoint in float32 to quantize it,
then casts the rest of the model). Weights and float32 scales are plain attributes, not
parameters or buffers, so a later `model.to(dtype)` leaves them as they are; the scales
the kernel reads are cast to the activation dtype when the layer first runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runtime.config import INT4_GROUP_SIZES, QUANTIZATIONS

KERNEL_MAX_ROWS = 32  # rows up to which the quantized kernel beats dequantize + matmul
INT4_INNER_K_TILES = 2


class QuantizedLinear(nn.Module):
    """y = x W^T + b with W held quantized; x: [..., in] -> [..., out]."""

    def __init__(self, out_features: int, in_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._dtype: torch.dtype | None = None  # activation dtype the kernel scales are cast to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] <= KERNEL_MAX_ROWS:
            if self._dtype != x.dtype:
                self._cast_scales(x.dtype)
                self._dtype = x.dtype
            out = self._kernel(flat.contiguous())
            if self.bias is not None:
                out = out + self.bias.to(x.dtype)
        else:
            out = F.linear(flat, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        return out.reshape(*x.shape[:-1], self.out_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] these layers compute with."""
        raise NotImplementedError

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _cast_scales(self, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def weight_bytes(self) -> int:
        """Bytes of the quantized weight and its scales (what a decode step reads)."""
        raise NotImplementedError


class Int8Linear(QuantizedLinear):
    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """q: int8 [out, in]; scale: [out]."""
        super().__init__(q.shape[0], q.shape[1], bias)
        self.q = q.contiguous()
        self.scale = scale.float().contiguous()
        self._kernel_scale = self.scale

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return cls(q, scale, bias)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.q.to(dtype) * self.scale.to(dtype)[:, None]

    def _cast_scales(self, dtype: torch.dtype) -> None:
        self._kernel_scale = self.scale.to(dtype)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self._kernel_scale)

    def weight_bytes(self) -> int:
        return self.q.numel() + 4 * self.scale.numel()


class Int4Linear(QuantizedLinear):
    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None = None) -> None:
        """q: integers in [0, 15], [out, in]; scale, zero: [in // group_size, out] (w = (q - 8) s + z)."""
        out_features, in_features = q.shape
        _check_int4_shape(out_features, in_features, group_size)
        super().__init__(out_features, in_features, bias)
        self.group_size = group_size
        q = q.to(torch.int32)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, INT4_INNER_K_TILES)
        self.nibbles = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)  # [out, in / 2]
        self.scale = scale.float().contiguous()
        self.zero = zero.float().contiguous()
        self._scale_zero = torch.stack((self.scale, self.zero), dim=-1)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, group_size: int = 32) -> Int4Linear:
        w = weight.detach().float()
        out_features, in_features = w.shape
        _check_int4_shape(out_features, in_features, group_size)
        groups = w.reshape(out_features, in_features // group_size, group_size)
        lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)  # [out, groups]
        scale = ((hi - lo) / 15).clamp_min(1e-12)
        q = torch.round((groups - lo[..., None]) / scale[..., None]).clamp_(0, 15).reshape(out_features, in_features)
        return cls(q, scale.T, (lo + 8 * scale).T, group_size, bias)

    def unpacked(self) -> torch.Tensor:
        """q as int32 [out, in]."""
        n = self.nibbles.to(torch.int32)
        return torch.stack((n & 15, n >> 4), dim=-1).reshape(self.out_features, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        g = self.group_size
        q = self.unpacked().to(dtype).reshape(self.out_features, self.in_features // g, g)
        w = (q - 8) * self.scale.T.to(dtype)[..., None] + self.zero.T.to(dtype)[..., None]
        return w.reshape(self.out_features, self.in_features)

    def _cast_scales(self, dtype: torch.dtype) -> None:
        self._scale_zero = torch.stack((self.scale, self.zero), dim=-1).to(dtype)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group_size, self._scale_zero)

    def weight_bytes(self) -> int:
        return self.packed.numel() + 8 * self.scale.numel()


def _check_int4_shape(out_features: int, in_features: int, group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES or in_features % group_size or out_features % 16:
        raise ValueError(f"int4 needs a group size in {INT4_GROUP_SIZES} that divides in_features and "
                         f"out_features divisible by 16 (the kernel's tiles); got [{out_features}, {in_features}], "
                         f"group {group_size}")


def quantize_linear(linear: nn.Module, method: str, group_size: int) -> QuantizedLinear:
    weight, bias = linear.weight, getattr(linear, "bias", None)  # an nn.Embedding for a tied head
    if method == "int8":
        return Int8Linear.from_float(weight, bias)
    if method == "int4":
        return Int4Linear.from_float(weight, bias, group_size)
    raise ValueError(f"unknown quantization {method!r}; one of {QUANTIZATIONS}")


def quantize_linears(model: nn.Module, method: str, group_size: int = 32) -> int:
    """Replace every nn.Linear under `model` (MergedLinear included) by its quantized
    form; returns how many were replaced."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, quantize_linear(child, method, group_size))
                count += 1
    return count
