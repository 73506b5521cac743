"""The C++ element-wise ops (runtime/kernels/cpu_elementwise.py) against the torch
references of the same contract (runtime/kernels/elementwise.py), and the model on them
against the eager torch ops."""

import pytest
import torch

from runtime.kernels import cpu_elementwise
from runtime.kernels import elementwise as reference

# float32: the same math in another summation order; bf16: one rounding step apart at most
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2)}


def test_built():
    assert cpu_elementwise.available()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 40])
def test_add_rmsnorm_matches_reference(dtype, with_residual, rows):
    gen = torch.Generator().manual_seed(rows)
    wide = torch.randn(rows, 700, generator=gen).to(dtype)
    x = wide[:, :576]  # SmolLM2's hidden size, rows strided
    residual = torch.randn(rows, 576, generator=gen).to(dtype) if with_residual else None
    weight = (1 + 0.1 * torch.randn(576, generator=gen)).to(dtype)
    got = cpu_elementwise.add_rmsnorm(x, weight, 1e-5, None if residual is None else residual.clone())
    want = reference.add_rmsnorm_reference(x.clone(), weight, 1e-5, None if residual is None else residual.clone())
    if with_residual:
        assert torch.equal(got[1], want[1])  # the residual stream: one rounding of the same sum
        got, want = got[0], want[0]
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rotary_matches_reference_on_a_strided_view(dtype, head_dim):
    from runtime.layers.rotary import RotaryEmbedding

    rope = RotaryEmbedding(head_dim, 4096, 1e6, None)
    positions = torch.tensor([0, 5, 4095, 77, 1000])
    qkv = torch.randn(5, 12 * head_dim).to(dtype)  # 8 query + 2 key heads rotated together; 2 value heads
    want = reference.rotary_reference_(qkv[:, :10 * head_dim].clone().view(5, 10, head_dim), rope.cos, rope.sin,
                                       positions)
    values = qkv[:, 10 * head_dim:].clone()
    got = cpu_elementwise.rotary_(qkv[:, :10 * head_dim].view(5, 10, head_dim), rope.cos, rope.sin, positions)
    assert got.data_ptr() == qkv.data_ptr()  # in place
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])
    assert torch.equal(qkv[:, 10 * head_dim:], values)  # the value heads are not touched


def test_refuses_bad_input():
    with pytest.raises(RuntimeError, match="outside the rotary table"):
        cpu_elementwise.rotary_(torch.randn(1, 2, 8), torch.ones(4, 4), torch.ones(4, 4), torch.tensor([4]))
    with pytest.raises(RuntimeError, match="weight"):
        cpu_elementwise.add_rmsnorm(torch.randn(2, 8), torch.ones(8, dtype=torch.bfloat16), 1e-6)


def test_model_on_the_cpu_kernels_matches_the_eager_ops(tiny_model_path):
    """The engine picks the C++ ops on CPU; greedy tokens equal those of the eager torch path."""
    from tests.helpers import make_core, random_prompts, run_core

    prompts = random_prompts(seed=3)
    params = {"max_new_tokens": 12, "temperature": 0.0}
    fused = make_core(tiny_model_path)
    assert fused.runner.model.elementwise is cpu_elementwise
    eager = make_core(tiny_model_path, extra={"fused_kernels": False})
    assert eager.runner.model.elementwise is None
    got, want = run_core(fused, prompts, params), run_core(eager, prompts, params)
    assert {k: v["output_ids"] for k, v in got.items()} == {k: v["output_ids"] for k, v in want.items()}
