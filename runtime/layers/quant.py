"""Weight-only quantized linear layers for CPU decoding (int8 per channel, int4 per group).

Decode reads every weight once per step, so on CPU its time follows the weights' bytes.
Two layouts, each run by a torch CPU kernel up to KERNEL_MAX_ROWS rows and by
dequantize-then-matmul above. The kernels' time grows with the rows much faster than a
matmul's (`radixflow bench quant` records it per shape; on this CPU, 2 threads, a
[3072, 576] weight: int4 kernel 44 us at 1 row and 617 us at 32, dequantize + matmul
~2.5 ms at any rows, bf16 oneDNN 58 us and 91 us). Up to 32 rows the kernel wins for
nearly every shape, and 32 is also the most tokens a decode or verify step carries
(speculative.STEP_TOKEN_BUDGET): those steps always take the same path, so a verified
token gets the bits a decode step would give it.

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

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from runtime.config import INT4_GROUP_SIZES, QUANTIZATIONS

KERNEL_MAX_ROWS = 32  # rows up to which the kernel runs (decode and verify steps); prefill dequantizes
# torch 2.13's two CPU kernels are vectorized for bf16 activations only: one row of a [960, 576]
# weight, 2 threads, AVX2 EPYC: int8 50 us in bf16, 432 us in float32, 488 us in float16. A float32
# model (bf16 checkpoints on CPUs without fast bf16 matmuls) runs its kernels in bf16.
KERNEL_DTYPES = {torch.float32: torch.bfloat16}
INT4_INNER_K_TILES = 2


class QuantizedLinear(nn.Module):
    """y = x W^T + b with W held quantized; x: [..., in] -> [..., out]."""

    def __init__(self, out_features: int, in_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._dtype: torch.dtype | None = None  # activation dtype the kernel scales are cast to
        self.kernel_max_rows = KERNEL_MAX_ROWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] <= self.kernel_max_rows:
            dtype = KERNEL_DTYPES.get(x.dtype, x.dtype)
            if self._dtype != dtype:
                self._cast_scales(dtype)
                self._dtype = dtype
            out = self._kernel(flat.to(dtype).contiguous()).to(x.dtype)
            if self.bias is not None:
                out = out + self.bias.to(x.dtype)
        else:
            out = F.linear(flat, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        return out.reshape(*x.shape[:-1], self.out_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in], computed in float32 and rounded once to `dtype` (a GGUF
        Q4_1 tensor at group 32 then gives exactly the unquantized checkpoint's weights)."""
        raise NotImplementedError

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _cast_scales(self, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def weight_bytes(self) -> int:
        """Bytes of the quantized weight and its scales (what a decode step reads)."""
        raise NotImplementedError

    def storage_bytes(self) -> int:
        """Bytes held in memory for this layer's weight."""
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
        return (self.q.float() * self.scale[:, None]).to(dtype)

    def _cast_scales(self, dtype: torch.dtype) -> None:
        self._kernel_scale = self.scale.to(dtype)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self._kernel_scale)

    def weight_bytes(self) -> int:
        return self.q.numel() + self._kernel_scale.numel() * self._kernel_scale.element_size()

    def storage_bytes(self) -> int:
        return self.weight_bytes() + (4 * self.scale.numel() if self._kernel_scale is not self.scale else 0)


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
        self.nibbles = None  # our own copy of q, only where the kernel's layout is not the one we read
        if not torch.equal(self.unpacked().to(torch.int32), q):
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
        """q as uint8 [out, in], written through strided views (~5x faster than a stack).
        The kernel's packed weight (torch 2.13, N a multiple of 64), viewed as bytes
        [out / 64, in, 32]: byte j of a block holds row j (low nibble) and row j + 32 (high)."""
        n, k = self.out_features, self.in_features
        if self.nibbles is not None:
            q = torch.empty(n, k // 2, 2, dtype=torch.uint8)
            torch.bitwise_and(self.nibbles, 15, out=q[..., 0])
            torch.bitwise_right_shift(self.nibbles, 4, out=q[..., 1])
            return q.view(n, k)
        if n % 64 or self.packed.numel() != n * k // 2:
            return torch.full((n, k), 255, dtype=torch.uint8)  # not a layout we read: the caller keeps nibbles
        blocks = self.packed.view(torch.uint8).view(n // 64, k, 32).transpose(1, 2)  # [out / 64, 32, in]
        q = torch.empty(n // 64, 2, 32, k, dtype=torch.uint8)
        torch.bitwise_and(blocks, 15, out=q[:, 0])
        torch.bitwise_right_shift(blocks, 4, out=q[:, 1])
        return q.view(n, k)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        g = self.group_size
        q = self.unpacked().view(self.out_features, self.in_features // g, g).float()
        s = self.scale.T[..., None]  # [out, groups, 1]
        w = q * s + (self.zero.T[..., None] - 8 * s)  # w = q s + (z - 8 s)
        return w.view(self.out_features, self.in_features).to(dtype)

    def _cast_scales(self, dtype: torch.dtype) -> None:
        self._scale_zero = torch.stack((self.scale, self.zero), dim=-1).to(dtype)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group_size, self._scale_zero)

    def weight_bytes(self) -> int:
        return self.packed.numel() + self._scale_zero.numel() * self._scale_zero.element_size()

    def storage_bytes(self) -> int:
        """Everything held: what the kernel reads, our own nibbles where needed, float32 scales."""
        nibbles = 0 if self.nibbles is None else self.nibbles.numel()
        return self.weight_bytes() + nibbles + 8 * self.scale.numel()


def _check_int4_shape(out_features: int, in_features: int, group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES or in_features % group_size or out_features % 16:
        raise ValueError(f"int4 needs a group size in {INT4_GROUP_SIZES} that divides in_features and "
                         f"out_features divisible by 16 (the kernel's tiles); got [{out_features}, {in_features}], "
                         f"group {group_size}")


# name -> (q int8 [out, in], scale [out]) already rounded (GPTQ, runtime/layers/gptq.py), or None
Int8Weights = Callable[[str], "tuple[torch.Tensor, torch.Tensor] | None"]


def quantize_linear(linear: nn.Module, method: str, group_size: int,
                    int8_weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> QuantizedLinear:
    weight, bias = linear.weight, getattr(linear, "bias", None)  # an nn.Embedding for a tied head
    if method == "int8":
        if int8_weights is not None:
            q, scale = int8_weights
            if q.shape != weight.shape:
                raise ValueError(f"rounded int8 weight {tuple(q.shape)} for a {tuple(weight.shape)} layer")
            return Int8Linear(q, scale, bias)
        return Int8Linear.from_float(weight, bias)
    if method == "int4":
        return Int4Linear.from_float(weight, bias, group_size)
    raise ValueError(f"unknown quantization {method!r}; one of {QUANTIZATIONS}")


def rounded_int8(tensors: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Module `name`'s (q, scale) from tensors named "{module}.q" / "{module}.scale" (the
    GPTQ cache, runtime/layers/gptq.py); None if it has none for that module."""
    if f"{name}.q" not in tensors:
        return None
    return tensors[f"{name}.q"], tensors[f"{name}.scale"]


def set_kernel_max_rows(model: nn.Module, rows: int) -> None:
    """Every quantized layer under `model` runs its kernel up to `rows` rows (dequantizes above)."""
    for layer in model.modules():
        if isinstance(layer, QuantizedLinear):
            layer.kernel_max_rows = rows


def quantize_decoder(layers: nn.Module, head: nn.Module, method: str, group_size: int,
                     head_method: str = "none",
                     int8_weights: Int8Weights | None = None) -> tuple[int, QuantizedLinear | None]:
    """Quantize every linear layer under `layers` in place (`method`), and build the output
    head's quantized form from `head` (an nn.Linear, or the nn.Embedding of a tied head)
    when `head_method` is not none. int8 layers take their integers from `int8_weights`
    (by module name: model.layers.0.self_attn.o_proj, ..., lm_head) where it has them, else
    round to nearest. Returns (layers quantized, the new head or None)."""
    lookup = int8_weights or (lambda name: None)
    count = 0
    if method != "none":
        for parent_name, parent in list(layers.named_modules(prefix="model.layers")):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, quantize_linear(child, method, group_size, lookup(f"{parent_name}.{name}")))
                    count += 1
    if head_method == "none":
        return count, None
    return count + 1, quantize_linear(head, head_method, group_size, lookup("lm_head"))
