"""Weight-only quantized linears (runtime/layers/quant.py) against float64 references."""

import gguf
import numpy as np
import pytest
import torch

from runtime.kernels import cpu_extension
from runtime.layers import quant
from runtime.layers.quant import Fp8Linear, Int4Linear, Int8Linear

# the kernels' error vs the float64 product of the same quantized weight, relative to the
# output's largest entry, by the dtype they compute in (torch's kernels run float32 models in
# bf16, quant.KERNEL_DTYPES; ours compute in float32)
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-5}
MAKERS = [lambda w, b: Int8Linear.from_float(w, b), lambda w, b: Int8Linear.from_float(w, b, 32),
          *[lambda w, b, g=g: Int4Linear.from_float(w, b, g) for g in (32, 64, 128)]]
MAKER_IDS = ["int8", "int8-g32", "int4-g32", "int4-g64", "int4-g128"]


def _weight(out_features=96, in_features=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, in_features, generator=g) * 0.05


def test_our_float32_kernels_are_built():
    assert cpu_extension.has_op("int8_linear") and cpu_extension.has_op("int4_linear")


@pytest.mark.parametrize("dtype,ours", [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False),
                                        (torch.float32, True)],
                         ids=["bf16", "bf16-our-kernel", "fp32-torch-kernel", "fp32-our-kernel"])
@pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
@pytest.mark.parametrize("rows", [1, 5, quant.KERNEL_MAX_ROWS, quant.KERNEL_MAX_ROWS + 1, 100])  # kernel / dequantize
def test_quantized_linear_matches_float64(make, dtype, ours, rows):
    w, bias = _weight(), torch.randn(96) * 0.1
    layer = make(w, bias)
    layer.prepare(dtype, ours=ours)
    assert (layer.kernel_dtype is None) == ours
    x = torch.randn(rows, 256)
    got = layer(x.to(dtype)).double()
    want = x.to(dtype).double() @ layer.dequantize(torch.float64).T + bias.to(dtype).double()
    assert got.shape == (rows, 96)
    kernel_dtype = (layer.kernel_dtype or torch.float32) if rows <= quant.KERNEL_MAX_ROWS else dtype
    assert (got - want).abs().max() <= TOLERANCE[torch.bfloat16 if dtype == torch.bfloat16 else kernel_dtype] * \
        want.abs().max()
    assert layer(x.to(dtype)).dtype == dtype


def test_layers_choose_our_kernel_for_float32_and_int8_bf16():
    for layer in (Int8Linear.from_float(_weight()), Int8Linear.from_float(_weight(), None, 32),
                  Int4Linear.from_float(_weight())):
        for dtype in (torch.float32, torch.bfloat16):
            assert layer(torch.randn(1, 256, dtype=dtype)).dtype == dtype
            ours = dtype == torch.float32 or isinstance(layer, Int8Linear)  # int4 bf16: torch's, faster
            assert (layer.kernel_dtype is None) == ours
    odd = Int8Linear.from_float(_weight(96, 48))  # 48 inputs: not runs of 32, torch's kernel
    odd(torch.randn(1, 48, dtype=torch.bfloat16))
    assert odd.kernel_dtype == torch.bfloat16


@pytest.mark.parametrize("offset", [0, 1, 16])
def test_int8_weights_at_any_byte_offset(offset):
    """A weight read from a safetensors file (the GPTQ cache) can start at any byte; torch's
    int8 kernel crashed on one that was not 64-byte aligned."""
    layer = Int8Linear.from_float(_weight())
    buffer = torch.empty(layer.q.numel() + 64, dtype=torch.int8)
    unaligned = buffer[offset:offset + layer.q.numel()].view_as(layer.q)
    unaligned.copy_(layer.q)
    moved = Int8Linear(unaligned, layer.scale)
    for each in (moved, layer):
        each.prepare(torch.bfloat16, ours=False)
    x = torch.randn(5, 256, dtype=torch.bfloat16)
    assert torch.equal(moved(x), layer(x))


@pytest.mark.parametrize("make,out_features", [*zip(MAKERS, [96] * len(MAKERS)), (MAKERS[0], 50)],
                         ids=[*MAKER_IDS, "int8-tail"])  # whole tiles of 4 outputs; int8 also with a tail
def test_our_kernels_give_each_row_the_same_bits_at_any_batch(make, out_features):
    """A row's output does not depend on the rows beside it (what makes a verified token's
    logits equal a decode step's), at every row count a decode or verify step can have."""
    layer = make(_weight(out_features), None)
    layer.prepare(torch.float32, ours=True)
    x = torch.randn(quant.KERNEL_MAX_ROWS, 256)
    alone = torch.cat([layer(x[i:i + 1]) for i in range(len(x))])
    want = x.double() @ layer.dequantize(torch.float64).T
    assert (alone.double() - want).abs().max() <= TOLERANCE[torch.float32] * want.abs().max()
    for rows in (2, 3, 4, 7, 13, quant.KERNEL_MAX_ROWS):
        assert torch.equal(layer(x[:rows]), alone[:rows])


@pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
def test_our_kernels_take_bf16_as_casting_around_float32_would(make):
    """bf16 activations go in and come out as they are: the bits of widening x to float32,
    the float32 kernel, and rounding y to bf16 (what the layers did with two torch ops)."""
    layer = make(_weight(), None)
    layer.prepare(torch.bfloat16, ours=True)
    x = torch.randn(7, 256, dtype=torch.bfloat16)
    y = layer._our_kernel(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, layer._our_kernel(x.float()).to(torch.bfloat16))


def test_our_kernels_refuse_bad_shapes():
    layer = Int8Linear.from_float(_weight())
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.radixflow.int8_linear(torch.randn(1, 256, dtype=torch.float64), layer.q, layer.scale, None, 256)
    with pytest.raises(RuntimeError, match="in features"):
        torch.ops.radixflow.int8_linear(torch.randn(1, 128), layer.q, layer.scale, None, 256)
    with pytest.raises(RuntimeError, match="shift per group"):
        torch.ops.radixflow.int8_linear(torch.randn(1, 256), layer.q, layer.scale, None, 32)
    layer4 = Int4Linear.from_float(_weight(), None, 64)
    with pytest.raises(RuntimeError, match="group size"):
        torch.ops.radixflow.int4_linear(torch.randn(1, 256), layer4.q4, layer4.scale, layer4.shift, 48)


def test_quantization_error_is_half_a_step():
    """Per channel or group (int8) or group (int4): no weight is further than half a step
    from its float value (the step is 1/127 of the row's largest |w|; per int8 group 1/255 of
    the group's range (min/max grid) or 1/127 of its largest |w| (symmetric grid: zero 0),
    whichever it holds; 1/15 of the group's range for int4)."""
    w = _weight()
    step8 = w.abs().amax(dim=1, keepdim=True) / 127
    groups = w.reshape(96, -1, 32)
    int8_g32 = Int8Linear.from_float(w, None, 32)
    symmetric = int8_g32.zero == 0
    assert 0 < symmetric.float().mean() < 0.5  # random weights: mostly min/max
    step8_g32 = torch.where(symmetric, groups.abs().amax(-1) / 127,
                            (groups.amax(-1) - groups.amin(-1)) / 255).repeat_interleave(32, dim=1)
    step4 = ((groups.amax(-1) - groups.amin(-1)) / 15).repeat_interleave(32, dim=1)
    for layer, step in ((Int8Linear.from_float(w), step8), (int8_g32, step8_g32), (Int4Linear.from_float(w), step4)):
        err = (layer.dequantize() - w).abs()
        assert (err <= 0.5 * step * (1 + 1e-5)).all() and err.max() > 0.4 * step.min()


def test_int8_groups_take_the_grid_with_the_smaller_error():
    w = _weight()
    layer = Int8Linear.from_float(w, None, 32)
    squared_error = ((layer.dequantize() - w) ** 2).view(96, -1, 32).sum(-1)
    groups = w.view(96, -1, 32)
    for symmetric in (False, True):  # each group's error is at most the other grid's
        if symmetric:
            scale = groups.abs().amax(-1, keepdim=True) / 127
            other = torch.round(groups / scale).clamp(-127, 127) * scale
        else:
            lo = groups.amin(-1, keepdim=True)
            scale = (groups.amax(-1, keepdim=True) - lo) / 255
            other = (torch.round((groups - lo) / scale).clamp(0, 255) - 128) * scale + lo + 128 * scale
        assert (squared_error <= ((other - groups) ** 2).sum(-1) * (1 + 1e-3)).all()  # (float rounding)


@pytest.mark.parametrize("rows", [48, 192])
def test_int4_packing_round_trips(rows):
    q = torch.randint(0, 16, (rows, 128), dtype=torch.int32)
    layer = Int4Linear(q, torch.rand(4, rows) + 0.1, torch.randn(4, rows), 32)
    assert torch.equal(layer.unpacked().int(), q)
    # torch's kernel's packed copy holds the same values: rows of the identity read W^T back
    layer._prepare_torch_kernel(torch.float32)
    eye = torch.eye(128)
    torch.testing.assert_close(layer._torch_kernel(eye[:quant.KERNEL_MAX_ROWS]),
                               layer.dequantize()[:, :quant.KERNEL_MAX_ROWS].T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0])
def test_gguf_blocks_are_exact_in_int8_groups(qtype):
    """int8 per group of 32 holds a Q4_1 block's 16 levels exactly on its min/max grid
    (q = 17 q4 - 128) and a Q8_0 block's q d on its symmetric grid (the default model's
    embedding, and so its tied head), up to the float32 rounding of the scale (a few ulps)."""
    w = _weight(64, 512).numpy()
    values = torch.from_numpy(np.array(gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)))
    layer = Int8Linear.from_float(values, None, 32)
    if qtype == gguf.GGMLQuantizationType.Q4_1:
        assert torch.equal((layer.q.int() + 128) % 17, torch.zeros_like(layer.q, dtype=torch.int32))
        assert (layer.zero != 0).all()
    else:
        assert (layer.zero == 0).all()
    torch.testing.assert_close(layer.dequantize(), values, rtol=0, atol=1e-6 * float(values.abs().max()))


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
    assert torch.equal(layer.scale, d)


def test_quantize_decoder_replaces_every_linear_and_needs_divisible_groups():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16, bias=False))
    count, head = quant.quantize_decoder(model, torch.nn.Embedding(32, 64), "int4", 32)
    assert (count, head) == (2, None)
    assert all(isinstance(m, Int4Linear) for m in (model[0], model[2]))
    for shape in ((16, 48), (8, 64)):
        with pytest.raises(ValueError, match="int4 needs a group size"):
            Int4Linear.from_float(torch.randn(*shape), None, 32)


@pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_one_pass_dequantize_gives_the_torch_expressions_values(make, dtype):
    """csrc/dequantize.cpp (a prefill chunk's weights) rounds as quant.py's torch expression
    does: q * scale, then + shift, then once to the dtype."""
    assert cpu_extension.has_op("int8_dequantize") and cpu_extension.has_op("int4_dequantize")
    layer = make(_weight(), None)
    assert torch.equal(layer.dequantize(dtype), layer.dequantize_torch(dtype))


def test_int8_per_channel_dequantizes_any_width():
    """The one-pass op reads runs of 32 weights; a row of another width keeps the torch path."""
    layer = Int8Linear.from_float(_weight(16, 48))
    assert torch.equal(layer.dequantize(), layer.dequantize_torch())
    assert (layer.dequantize() - _weight(16, 48)).abs().max() < 0.01


def test_fp8_layer_is_the_product_of_its_rounded_operands_and_batch_invariant():
    """W8A8 e4m3: the output is the float64 product of the e4m3 weights (times their row
    scales) and each activation row rounded to e4m3 with its own scale, to the bf16 rounding
    of the output; against the float weights, within e4m3's 3 mantissa bits. A row's bits
    do not depend on the rows beside it (its scale is its own)."""
    w, bias = _weight(), torch.randn(96) * 0.1
    layer = Fp8Linear.from_float(w, bias)
    assert layer.q.dtype == torch.float8_e4m3fn and layer.weight_bytes() == 96 * 256 + 4 * 96
    x = torch.randn(21, 256)
    got = layer(x).double()
    scale = x.abs().amax(dim=1, keepdim=True) / 448
    x8 = (x / scale).to(torch.float8_e4m3fn).double() * scale.double()
    exact = x8 @ layer.dequantize(torch.float64).T + bias.double()
    assert (got - exact).abs().max() <= 1e-2 * exact.abs().max()  # bf16 output
    want = x.double() @ w.double().T + bias.double()
    assert (got - want).abs().max() <= 0.1 * want.abs().max()
    assert (layer.dequantize() - w).abs().max() <= w.abs().max() / 16  # half a step of 3 mantissa bits
    alone = torch.cat([layer(x[i:i + 1]) for i in range(len(x))])
    assert torch.equal(alone, layer(x))
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_fp8_refuses_shapes_its_gemm_cannot_tile():
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear.from_float(torch.randn(24, 256))
    with pytest.raises(ValueError, match="no group size"):
        quant.quantize_linear(torch.nn.Linear(256, 96), "fp8", 32)
