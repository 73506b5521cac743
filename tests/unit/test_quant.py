"""Weight-only quantized linears (runtime/layers/quant.py) against float64 references."""

import gguf
import numpy as np
import pytest
import torch

from runtime.layers import quant
from runtime.layers.quant import Int4Linear, Int8Linear

# bf16 activations and outputs: the kernels' error vs the float64 product of the same
# quantized weight, relative to the output's largest entry (fp32 inputs: far tighter, but
# up to KERNEL_MAX_ROWS rows they go through the kernel in bf16: quant.KERNEL_DTYPES)
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-5}


def _weight(out_features=96, in_features=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, in_features, generator=g) * 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("make", [lambda w, b: Int8Linear.from_float(w, b),
                                  *[lambda w, b, g=g: Int4Linear.from_float(w, b, g) for g in (32, 64, 128)]],
                         ids=["int8", "int4-g32", "int4-g64", "int4-g128"])
@pytest.mark.parametrize("rows", [1, 5, quant.KERNEL_MAX_ROWS, quant.KERNEL_MAX_ROWS + 1, 100])  # kernel / dequantize
def test_quantized_linear_matches_float64(make, dtype, rows):
    w, bias = _weight(), torch.randn(96) * 0.1
    layer = make(w, bias)
    x = torch.randn(rows, 256)
    got = layer(x.to(dtype)).double()
    want = x.to(dtype).double() @ layer.dequantize(torch.float64).T + bias.to(dtype).double()
    assert got.shape == (rows, 96)
    kernel_dtype = quant.KERNEL_DTYPES.get(dtype, dtype) if rows <= quant.KERNEL_MAX_ROWS else dtype
    assert (got - want).abs().max() <= TOLERANCE[kernel_dtype] * want.abs().max()
    assert layer(x.to(dtype)).dtype == dtype


def test_quantization_error_is_half_a_step():
    """Per channel (int8) or group (int4): no weight is further than half a step from its
    float value (the step is 1/127 of the row's largest |w|, or 1/15 of the group's range)."""
    w = _weight()
    step8 = w.abs().amax(dim=1, keepdim=True) / 127
    groups = w.reshape(96, -1, 32)
    step4 = ((groups.amax(-1) - groups.amin(-1)) / 15).repeat_interleave(32, dim=1)
    for layer, step in ((Int8Linear.from_float(w), step8), (Int4Linear.from_float(w), step4)):
        err = (layer.dequantize() - w).abs()
        assert (err <= 0.5 * step * (1 + 1e-5)).all() and err.max() > 0.4 * step.min()


@pytest.mark.parametrize("rows", [48, 192])  # our own nibbles / read from the kernel's layout (rows % 64 == 0)
def test_int4_packing_round_trips(rows):
    q = torch.randint(0, 16, (rows, 128), dtype=torch.int32)
    layer = Int4Linear(q, torch.rand(4, rows) + 0.1, torch.randn(4, rows), 32)
    if rows % 64:  # not whole 64-row blocks: the kernel's layout is never read back, our own copy is kept
        assert layer.nibbles is not None
    # whole blocks: the kernel's copy is read back where it has the layout we know (torch 2.13 on AVX512);
    # other CPUs (AVX2) pack differently, and then our own copy is kept: either way the values come back
    assert torch.equal(layer.unpacked().int(), q)
    # the kernel's own packed copy holds the same values: rows of the identity read W^T back
    eye = torch.eye(128)
    torch.testing.assert_close(layer._kernel(eye[:quant.KERNEL_MAX_ROWS]),
                               layer.dequantize()[:, :quant.KERNEL_MAX_ROWS].T, rtol=1e-6, atol=1e-6)


def test_gguf_q4_1_blocks_come_back_exactly():
    """A Q4_1 tensor, dequantized by the gguf package to float32 (as the GGUF converter
    does), re-quantized at group 32: the same weights, bit for bit, in float32."""
    w = _weight(64, 512).numpy()
    blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
    values = torch.from_numpy(np.array(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_1)))
    layer = Int4Linear.from_float(values, None, 32)
    assert torch.equal(layer.dequantize(torch.float32), values)
    # and the block scales are llama.cpp's own: d (fp16) per 32 weights
    d = torch.from_numpy(blocks.reshape(64, 16, 20)[..., :2].copy().view(np.float16).astype(np.float32))[..., 0]
    assert torch.equal(layer.scale.T, d)


def test_quantize_decoder_replaces_every_linear_and_needs_divisible_groups():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16, bias=False))
    count, head = quant.quantize_decoder(model, torch.nn.Embedding(32, 64), "int4", 32)
    assert (count, head) == (2, None)
    assert all(isinstance(m, Int4Linear) for m in (model[0], model[2]))
    for shape in ((16, 48), (8, 64)):
        with pytest.raises(ValueError, match="int4 needs a group size"):
            Int4Linear.from_float(torch.randn(*shape), None, 32)
