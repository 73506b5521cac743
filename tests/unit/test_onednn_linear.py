"""The oneDNN linear layer the engine uses on CPU in bf16: same values as F.linear."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runtime.layers.linear import MergedLinear, OneDNNLinear, onednn_packing_available, pack_linears_onednn
from tests.helpers import BF16_ONEDNN, needs_bf16_onednn


def test_available_on_cpu_for_float32_and_bf16_with_its_kernels():
    assert onednn_packing_available(torch.bfloat16, "cpu") == BF16_ONEDNN  # CI's torch is built with oneDNN
    assert onednn_packing_available(torch.float32, "cpu")
    assert not onednn_packing_available(torch.float16, "cpu")
    assert not onednn_packing_available(torch.bfloat16, "cuda") and not onednn_packing_available(torch.float32, "cuda")


@pytest.mark.parametrize("shape", [(1000, 576), (576, 1536), (576, 2048)])
def test_float32_is_close_to_f_linear_and_row_invariant(shape):
    """Not bitwise equal to F.linear in float32, but close, and a row's bits are the same
    whatever rows it is computed with (so batching does not change a request's tokens)."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(*shape, generator=g) / shape[1] ** 0.5, torch.randn(shape[0], generator=g)
    x = torch.randn(80, shape[1], generator=g)
    layer = OneDNNLinear(w, b)
    with torch.inference_mode():
        full = layer(x)
        torch.testing.assert_close(full, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        for rows in (1, 2, 3, 9, 32, 64):
            assert torch.equal(layer(x[:rows]), full[:rows])
        assert torch.equal(layer(x[0]), full[0])  # one row without a batch dim


@needs_bf16_onednn
@pytest.mark.parametrize("in_features", [576, 1536, 2048])
def test_bf16_rows_are_batch_invariant(in_features):
    """A row gets the same bits alone as in any batch (oneDNN's one-row kernel, AVX512,
    sums in another order above 1024 inputs: a lone row runs as two)."""
    g = torch.Generator().manual_seed(in_features)
    w = (torch.randn(576, in_features, generator=g) / in_features ** 0.5).to(torch.bfloat16)
    x = torch.randn(40, in_features, generator=g).to(torch.bfloat16)
    layer = OneDNNLinear(w, None)
    with torch.inference_mode():
        full = layer(x)
        assert torch.equal(torch.cat([layer(x[i:i + 1]) for i in range(len(x))]), full)
        for rows in (2, 5, 17):
            assert torch.equal(layer(x[:rows]), full[:rows])


@needs_bf16_onednn
@pytest.mark.parametrize("rows", [1, 3, 8, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_f_linear_bit_for_bit(rows, bias):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(1000, 576, generator=g).to(torch.bfloat16)
    b = torch.randn(1000, generator=g).to(torch.bfloat16) if bias else None
    x = torch.randn(rows, 576, generator=g).to(torch.bfloat16)
    with torch.inference_mode():
        got = OneDNNLinear(w, b)(x)
    assert got.shape == (rows, 1000) and got.dtype == torch.bfloat16
    assert torch.equal(got, F.linear(x, w, b))


@needs_bf16_onednn
def test_pack_replaces_every_linear_and_keeps_outputs():
    model = nn.Sequential(MergedLinear(64, {"a": 32, "b": 16}, bias=True), nn.ReLU(), nn.Linear(48, 8))
    model = model.to(torch.bfloat16)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        before = model(x)
        assert pack_linears_onednn(model) == 2
        after = model(x)
    assert [type(m).__name__ for m in model] == ["OneDNNLinear", "ReLU", "OneDNNLinear"]
    assert torch.equal(before, after)
