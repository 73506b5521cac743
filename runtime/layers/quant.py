"""Quantized linear layers: weight-only for CPU decoding (int8 per channel or group, int4 per
group), and fp8 weights and activations (Fp8Linear) for CUDA.

Decode reads every weight once per step, so on CPU its time follows the weights' bytes.
Each layout runs a kernel up to KERNEL_MAX_ROWS rows and dequantize-then-matmul above:
  - our own kernels (csrc/quant_linear.cpp, AVX2 + FMA, or AVX-512), computing in float32
    with float32 scales: for float32 activations, and for bf16 ones with int8 layers (per
    channel as fast as torch's kernel on an AVX-512 EPYC: a SmolLM2 decode step 7.6-7.9 ms
    vs 7.9-8.6, 32 rows of a 3072x576 layer 419 vs 365 us; torch has no int8 kernel with a
    scale per group at all);
  - torch's CPU kernels elsewhere: int4 with bf16 activations (1.6x faster than ours at
    4-32 rows), and where ours did not build. They are vectorized for bf16 activations only,
    so a float32 model then runs them in bf16 (KERNEL_DTYPES), with bf16 scales, which
    costs accuracy (`radixflow bench quant` records both).
Kernels' time grows with the rows much faster than a matmul's (`radixflow bench quant`
records it per shape). Up to 32 rows the kernel wins for nearly every shape, and 32 is
also the most tokens a decode or verify step carries (speculative.STEP_TOKEN_BUDGET):
those steps always take the same path, so a verified token gets the bits a decode step
would give it.

  int8: w[n, k] = q[n, k] * scale[n]            q int8 in [-127, 127], symmetric per output row,
        or q[n, k] * s[n, g] + z[n, g]        per group: min/max (like int4: exact for Q4_1
        blocks) or symmetric (z = 0: exact for Q8_0 blocks), whichever fits the group better
  int4: w[n, k] = (q[n, k] - 8) * s[g, n] + z[g, n]   q in [0, 15], g = k // group_size
        min/max per group: s = (max - min) / 15, z = min + 8 s. For a GGUF Q4_1 tensor
        (w = q d + m per block of 32, with q = 0 and q = 15 in every block by llama.cpp's
        quantizer) group 32 gives back exactly its q, d and m: the int4 model is the one
        llama.cpp serves (in torch's kernels up to s and z held in bf16).
        q is held as `q4` uint8 [out, in / 2]: each run of 32 k values of a row in 16 bytes,
        byte j = q[k0 + j] | q[k0 + 16 + j] << 4 (what our kernel reads); torch's packed
        layout is built only if its kernel runs.

Quantize from float32 weights (the engine loads a checkpoint in float32 to quantize it,
then casts the rest of the model). Weights and float32 scales are plain attributes, not
parameters or buffers, so a later `model.to(dtype)` leaves them as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from runtime.config import QUANT_GROUP_SIZES, QUANTIZATIONS
from runtime.kernels import cpu_extension

KERNEL_MAX_ROWS = 32  # rows up to which the kernel runs (decode and verify steps); prefill dequantizes
# torch 2.13's two CPU kernels are vectorized for bf16 activations only: one row of a [960, 576]
# weight, 2 threads, AVX2 EPYC: int8 50 us in bf16, 432 us in float32, 488 us in float16. Where our
# float32 kernels are missing, a float32 model runs torch's in bf16.
KERNEL_DTYPES = {torch.float32: torch.bfloat16}
INT4_INNER_K_TILES = 2
OUR_KERNEL_IO = (torch.float32, torch.bfloat16)  # activations our kernels take and return as they are


class QuantizedLinear(nn.Module):
    """y = x W^T + b with W held quantized; x: [..., in] -> [..., out]."""

    OUR_KERNEL = ""  # the torch.ops.radixflow op (float32 compute)
    OURS_FOR_BF16 = True  # bf16 activations too run ours (else torch's kernel, where it has one)

    def __init__(self, out_features: int, in_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.kernel_max_rows = KERNEL_MAX_ROWS
        self._dtype: torch.dtype | None = None  # the activation dtype the kernel was prepared for
        self.kernel_dtype: torch.dtype | None = None  # what the kernel computes in (None: ours, float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (a decode step calls ~120 of these per token: no op here that is not needed)
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if flat.shape[0] <= self.kernel_max_rows:
            if self._dtype != x.dtype:
                self.prepare(x.dtype)
            if self.kernel_dtype is None:  # ours computes in float32, reads and writes float32 or bf16
                out = self._our_kernel((flat if x.dtype in OUR_KERNEL_IO else flat.float()).contiguous())
            else:
                out = self._torch_kernel(flat.to(self.kernel_dtype).contiguous())
            if out.dtype != x.dtype:
                out = out.to(x.dtype)
            if self.bias is not None:
                out = out + self.bias.to(x.dtype)
        else:
            out = F.linear(flat, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def prepare(self, dtype: torch.dtype, ours: bool | None = None) -> None:
        """Choose the kernel for `dtype` activations (or as `ours` says): ours where it built,
        for float32, and for other dtypes where OURS_FOR_BF16 (cast to float32 around it
        unless bf16); else torch's in KERNEL_DTYPES' dtype, with its scales cast once."""
        built = cpu_extension.has_op(self.OUR_KERNEL)  # (builds the extension on first use)
        if ours is None:
            ours = built and self.in_features % 32 == 0 and (dtype == torch.float32 or self.OURS_FOR_BF16)
        elif ours and not built:
            raise RuntimeError(f"torch.ops.radixflow.{self.OUR_KERNEL} is not built on this machine")
        self._dtype = dtype
        self.kernel_dtype = None if ours else KERNEL_DTYPES.get(dtype, dtype)
        if not ours:
            self._prepare_torch_kernel(self.kernel_dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in], computed in float32 and rounded once to `dtype` (a GGUF
        Q4_1 tensor at group 32 then gives exactly the unquantized checkpoint's weights):
        our one-pass op where it built, else `dequantize_torch`, which gives the same values."""
        raise NotImplementedError

    def _our_kernel(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _torch_kernel(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _prepare_torch_kernel(self, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def weight_bytes(self) -> int:
        """Bytes of the quantized weight and its scales that the chosen kernel reads (a decode step)."""
        raise NotImplementedError

    def storage_bytes(self) -> int:
        """Bytes held in memory for this layer's weight."""
        raise NotImplementedError


class Int8Linear(QuantizedLinear):
    OUR_KERNEL = "int8_linear"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 group_size: int = 0, zero: torch.Tensor | None = None) -> None:
        """q: int8 [out, in]; group_size 0: scale [out] (w = q scale, one per output row);
        else scale and zero [out, in // group_size] (w = q scale + zero)."""
        super().__init__(q.shape[0], q.shape[1], bias)
        if group_size and (group_size not in QUANT_GROUP_SIZES or self.in_features % group_size):
            raise ValueError(f"int8 needs a group size of 0 (per channel) or one of {QUANT_GROUP_SIZES} that "
                             f"divides in_features {self.in_features}; got {group_size}")
        if (zero is None) != (group_size == 0):
            raise ValueError("int8: a zero per group, none per channel")
        self.group_size = group_size
        self.q = _aligned(q.contiguous())
        self.scale = scale.float().contiguous()
        self.zero = None if zero is None else zero.float().contiguous()
        self._kernel_scale = self.scale  # the scale torch's kernel reads, in its dtype

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, group_size: int = 0) -> Int8Linear:
        """Per channel: symmetric, scale = max |w| / 127. Per group, whichever of two grids
        holds the group with the smaller squared error: min/max (scale = (max - min) / 255,
        zero = min + 128 scale), on which a GGUF Q4_1 block (16 levels d apart from its
        minimum) lands exactly (q = 17 q4 - 128); or symmetric (scale = max |w| / 127, zero 0),
        on which a Q8_0 block (q d, |q| <= 127) lands exactly."""
        w = weight.detach().float()
        if not group_size:
            scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
            q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
            return cls(q, scale, bias)
        groups = w.reshape(w.shape[0], -1, group_size)  # [out, groups, weights per scale]
        lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
        scale = ((hi - lo) / 255).clamp_min(1e-12)
        zero = lo + 128 * scale
        q = torch.round((groups - lo[..., None]) / scale[..., None]).clamp_(0, 255) - 128
        sym_scale = groups.abs().amax(dim=-1).clamp_min(1e-12) / 127
        sym_q = torch.round(groups / sym_scale[..., None]).clamp_(-127, 127)
        error = ((q * scale[..., None] + zero[..., None] - groups) ** 2).sum(-1)
        sym = ((sym_q * sym_scale[..., None] - groups) ** 2).sum(-1) < error  # [out, groups]
        q = torch.where(sym[..., None], sym_q, q).to(torch.int8)
        return cls(q.reshape(w.shape), torch.where(sym, sym_scale, scale), bias, group_size,
                   torch.where(sym, 0.0, zero))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        g = self.group_size or self.in_features
        if g % 32 == 0 and cpu_extension.has_op("int8_dequantize"):  # one pass (csrc/dequantize.cpp), same values
            return torch.ops.radixflow.int8_dequantize(self.q, self.scale, self.zero, g, dtype)
        return self.dequantize_torch(dtype)

    def dequantize_torch(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        g = self.group_size or self.in_features
        w = self.q.view(self.out_features, -1, g).float() * self.scale.view(self.out_features, -1, 1)
        if self.zero is not None:
            w = w + self.zero[..., None]
        return w.view(self.out_features, self.in_features).to(dtype)

    def _our_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.radixflow.int8_linear(x, self.q, self.scale, self.zero, self.group_size or self.in_features)

    def _prepare_torch_kernel(self, dtype: torch.dtype) -> None:
        self._kernel_scale = self.scale.to(dtype)

    def _torch_kernel(self, x: torch.Tensor) -> torch.Tensor:
        if self.group_size:  # no torch kernel: dequantize (slow, but any dtype)
            return F.linear(x, self.dequantize(x.dtype))
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self._kernel_scale)

    def weight_bytes(self) -> int:
        zero = 0 if self.zero is None else 4 * self.zero.numel()
        return self.q.numel() + self._kernel_scale.numel() * self._kernel_scale.element_size() + zero

    def storage_bytes(self) -> int:
        return self.weight_bytes() + (4 * self.scale.numel() if self._kernel_scale is not self.scale else 0)


class Int4Linear(QuantizedLinear):
    OUR_KERNEL = "int4_linear"
    # torch's int4 kernel on bf16 activations: as fast at one row, 1.6x faster at 4-32 rows
    # (AVX-512 EPYC, 3072x576: 4 rows 46 vs 73 us, 32 rows 330 vs 545 us)
    OURS_FOR_BF16 = False

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None = None) -> None:
        """q: integers in [0, 15], [out, in]; scale, zero: [in // group_size, out] (w = (q - 8) s + z)."""
        out_features, in_features = q.shape
        _check_int4_shape(out_features, in_features, group_size)
        super().__init__(out_features, in_features, bias)
        self.group_size = group_size
        runs = q.to(torch.uint8).contiguous().view(out_features, in_features // 32, 2, 16)
        self.q4 = (runs[:, :, 0] | (runs[:, :, 1] << 4)).reshape(out_features, in_features // 2)
        # [out, groups], what our kernel reads: w = q scale + shift (shift = z - 8 s)
        self.scale = scale.float().T.contiguous()
        self.shift = (zero.float() - 8 * scale.float()).T.contiguous()
        self.packed: torch.Tensor | None = None  # torch's kernel layout, built if that kernel runs
        self._scale_zero: torch.Tensor | None = None

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
        """q as uint8 [out, in]."""
        n, k = self.out_features, self.in_features
        runs = self.q4.view(n, k // 32, 1, 16)
        q = torch.empty(n, k // 32, 2, 16, dtype=torch.uint8)
        torch.bitwise_and(runs, 15, out=q[:, :, :1])
        torch.bitwise_right_shift(runs, 4, out=q[:, :, 1:])
        return q.view(n, k)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if cpu_extension.has_op("int4_dequantize"):  # one pass (csrc/dequantize.cpp), same values
            return torch.ops.radixflow.int4_dequantize(self.q4, self.scale, self.shift, self.group_size, dtype)
        return self.dequantize_torch(dtype)

    def dequantize_torch(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        g = self.group_size
        q = self.unpacked().view(self.out_features, self.in_features // g, g).float()
        w = q * self.scale[..., None] + self.shift[..., None]  # [out, groups, g]
        return w.view(self.out_features, self.in_features).to(dtype)

    def _our_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.radixflow.int4_linear(x, self.q4, self.scale, self.shift, self.group_size)

    def _prepare_torch_kernel(self, dtype: torch.dtype) -> None:
        if self.packed is None:
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.unpacked().to(torch.int32),
                                                                              INT4_INNER_K_TILES)
        zero = self.shift + 8 * self.scale  # torch's kernel: w = (q - 8) s + z, s and z [groups, out]
        self._scale_zero = torch.stack((self.scale.T, zero.T), dim=-1).to(dtype)

    def _torch_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group_size, self._scale_zero)

    def weight_bytes(self) -> int:
        if self.kernel_dtype is None:
            return self.q4.numel() + 8 * self.scale.numel()
        return self.packed.numel() + self._scale_zero.numel() * self._scale_zero.element_size()

    def storage_bytes(self) -> int:
        """Everything held: our q4, scale and shift, and torch's packed copy if built."""
        torch_kernel = 0 if self.packed is None else (
            self.packed.numel() + self._scale_zero.numel() * self._scale_zero.element_size())
        return self.q4.numel() + 8 * self.scale.numel() + torch_kernel


class Fp8Linear(QuantizedLinear):
    """fp8 weights and activations (W8A8, e4m3): q float8_e4m3fn [out, in] with one float32
    scale per output row (max |w| / 448, e4m3's largest value); each activation row rounded
    to e4m3 at run time with its own scale (max |x| / 448), so a row's bits do not depend on
    the rows beside it. y = (x8 sx) (q sw)^T + b through torch._scaled_mm at every row count:
    on CUDA (compute capability 8.9+: L4, H100) a tensor-core fp8 GEMM reading half of bf16's
    weight bytes; on CPU torch 2.13 has only a reference loop (one row of a 3072x576 layer
    ~13 ms: tests only, the engine warns)."""

    E4M3_MAX = 448.0

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__(q.shape[0], q.shape[1], bias)
        if q.dtype != torch.float8_e4m3fn or self.in_features % 16 or self.out_features % 16:
            raise ValueError(f"fp8 needs float8_e4m3fn weights with in and out features divisible by 16 "
                             f"(_scaled_mm's tiles); got {q.dtype} [{self.out_features}, {self.in_features}]")
        self.q = q.contiguous()  # [out, in]; q.t() is the column-major operand _scaled_mm takes
        self.scale = scale.float().reshape(1, -1).contiguous()  # [1, out]

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Fp8Linear:
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / cls.E4M3_MAX
        return cls((w / scale[:, None]).clamp_(-cls.E4M3_MAX, cls.E4M3_MAX).to(torch.float8_e4m3fn), scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float().contiguous()
        rows, pad = flat.shape[0], -flat.shape[0] % 16  # rows padded to _scaled_mm's tiles (dropped below)
        x_scale = flat.new_ones(rows + pad, 1)  # [R + pad, 1], strides (1, 1) as _scaled_mm checks
        x_scale[:rows, 0] = flat.abs().amax(dim=1).clamp_min(1e-12) / self.E4M3_MAX
        x8 = torch.zeros(rows + pad, self.in_features, dtype=torch.float8_e4m3fn, device=x.device)
        x8[:rows] = flat / x_scale[:rows]
        # bf16 out: the one output dtype of CUDA's row-wise scaled GEMM
        out = torch._scaled_mm(x8, self.q.t(), scale_a=x_scale, scale_b=self.scale, out_dtype=torch.bfloat16)
        out = out[:rows].to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.q.float() * self.scale.T).to(dtype)

    def weight_bytes(self) -> int:
        return self.q.numel() + 4 * self.scale.numel()

    def storage_bytes(self) -> int:
        return self.weight_bytes()


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """`t`, copied where its data is not 64-byte aligned (a tensor read from a safetensors
    file can start at any byte): torch 2.13's int8 kernel crashes on such weights (AVX512)."""
    return t if t.data_ptr() % 64 == 0 else t.clone()


def _check_int4_shape(out_features: int, in_features: int, group_size: int) -> None:
    if group_size not in QUANT_GROUP_SIZES or in_features % group_size or out_features % 16:
        raise ValueError(f"int4 needs a group size in {QUANT_GROUP_SIZES} that divides in_features and "
                         f"out_features divisible by 16 (the kernel's tiles); got [{out_features}, {in_features}], "
                         f"group {group_size}")


# name -> (q int8 [out, in], scale [out]) already rounded (GPTQ, runtime/layers/gptq.py), or None
Int8Weights = Callable[[str], "tuple[torch.Tensor, torch.Tensor] | None"]


def quantize_linear(linear: nn.Module, method: str, group_size: int | None,
                    int8_weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> QuantizedLinear:
    """`linear` quantized by `method`; group_size None: the method's default (int8 one scale
    per output row, int4 32)."""
    weight, bias = linear.weight, getattr(linear, "bias", None)  # an nn.Embedding for a tied head
    if method == "int8":
        if int8_weights is not None:  # GPTQ's: one scale per row
            q, scale = int8_weights
            if q.shape != weight.shape:
                raise ValueError(f"rounded int8 weight {tuple(q.shape)} for a {tuple(weight.shape)} layer")
            return Int8Linear(q, scale, bias)
        return Int8Linear.from_float(weight, bias, group_size or 0)
    if method == "int4":
        return Int4Linear.from_float(weight, bias, group_size or 32)
    if method == "fp8":
        if group_size:
            raise ValueError(f"fp8 has one scale per output row: no group size (got {group_size})")
        return Fp8Linear.from_float(weight, bias)
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


def quantize_decoder(layers: nn.Module, head: nn.Module, method: str, group_size: int | None,
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
