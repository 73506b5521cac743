"""The engine with weight-only quantization and the int8 KV cache (tiny random model, real
tokenizer): batching, chunked prefill, the radix cache and paging give the same greedy
tokens as the same quantized model run one request at a time, and the layers really are
quantized."""

import pytest
import torch

from runtime.demo.checkpoint import demo_model_path
from runtime.layers.gptq import gptq_int8_weights
from runtime.layers.quant import Fp8Linear, Int4Linear, Int8Linear, QuantizedLinear
from tests.helpers import make_core, random_prompts, run_core

GREEDY = {"max_new_tokens": 24, "temperature": 0.0, "ignore_eos": True}
# the quantized layers run their kernel at every row count: the kernel and the dequantized path (above
# KERNEL_MAX_ROWS) sum in different orders, so a short prompt's prefill bits would depend on what it is
# batched with; with one path they may not
ONE_PATH = {"extra": {"quantized_kernel_max_rows": 1 << 30}}
METHODS = {"int8": {"quantization": "int8", **ONE_PATH},
           "int8-g32": {"quantization": "int8", "quantization_group_size": 32, **ONE_PATH},
           "int4": {"quantization": "int4", **ONE_PATH},
           "int4-g128-head8": {"quantization": "int4", "quantization_group_size": 128, "lm_head_quantization": "int8",
                               **ONE_PATH},
           "int8-gptq-head8": {"quantization": "int8", "lm_head_quantization": "int8", "quantization_method": "gptq",
                               **ONE_PATH},
           "kv-int8": {"kv_cache_dtype": "int8"}}


@pytest.fixture(scope="module")
def path():
    return demo_model_path("qwen2", "tiny", "float32")


def prompts():
    shared = random_prompts(lens=(70,), seed=5)[0]
    return random_prompts(lens=(5, 40, 90, 17), seed=2) + [shared + p for p in random_prompts(lens=(3, 30), seed=3)]


@pytest.fixture(scope="module", params=list(METHODS))
def alone(request, path):
    """Each prompt on its own engine run, one at a time."""
    core = make_core(path, disable_radix_cache=True, **METHODS[request.param])
    return request.param, {i: run_core(core, [p], GREEDY)["r0"]["output_ids"] for i, p in enumerate(prompts())}


@pytest.mark.parametrize("options", [{}, {"chunked_prefill_size": 32, "max_prefill_tokens": 64}, {"page_size": 16}],
                         ids=["together", "chunked", "paged"])
def test_quantized_batches_match_one_at_a_time(path, alone, options):
    method, expected = alone
    core = make_core(path, **METHODS[method], **options)
    for _ in range(2):  # the second round reads prompts and outputs from the radix cache
        got = run_core(core, prompts(), GREEDY)
        assert {i: got[f"r{i}"]["output_ids"] for i in expected} == expected
    core.scheduler.check_no_leaks()


def test_fp8_engine_serves_batches_deterministically(path):
    """fp8 end to end (on CPU torch's reference _scaled_mm): batched and chunked requests are
    served with nothing leaked, the same tokens on every run. Each activation row is rounded
    on its own (the layer's bits are batch invariant: test_quant.py), but rounding to 3
    mantissa bits turns the last-bit differences between a batched and a lone prefill's
    attention into other tokens of this random model now and then, so one-at-a-time
    agreement is asserted for most requests, not all."""
    options = {"quantization": "fp8", "lm_head_quantization": "fp8", "disable_radix_cache": True}
    core = make_core(path, **options)
    alone = {i: run_core(core, [p], GREEDY)["r0"]["output_ids"] for i, p in enumerate(prompts())}
    for extra in ({}, {"chunked_prefill_size": 32, "max_prefill_tokens": 64}):
        batched = make_core(path, **options, **extra)
        runs = [run_core(batched, prompts(), GREEDY) for _ in range(2)]
        got = {i: runs[0][f"r{i}"]["output_ids"] for i in alone}
        assert got == {i: runs[1][f"r{i}"]["output_ids"] for i in alone}
        assert sum(got[i] == alone[i] for i in alone) >= len(alone) - 1
        batched.scheduler.check_no_leaks()


def test_layers_are_quantized_and_smaller(path):
    # F.linear for the float model: oneDNN's reordered weights are opaque tensors with no .weight to count
    float_core = make_core(path, cpu_linear="torch")
    int4_core = make_core(path, quantization="int4", lm_head_quantization="int4")
    model = int4_core.runner.model
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 4 * 4 + 1 and all(isinstance(m, Int4Linear) for m in layers)  # qkv, o, gate_up, down; head
    float_bytes = sum(m.weight.numel() * 4 for m in float_core.runner.model.model.layers.modules()
                      if hasattr(m, "weight") and m.weight.dim() == 2)
    int4_bytes = sum(m.weight_bytes() for m in model.model.layers.modules() if isinstance(m, QuantizedLinear))
    assert int4_bytes <= float_bytes * 6 / 32  # 4 bits + a float32 scale and zero per 32 weights, vs 32 bits
    int8 = make_core(path, quantization="int8").runner.model
    assert not isinstance(int8.lm_head, QuantizedLinear) and isinstance(int8.model.layers[0].mlp.down_proj, Int8Linear)
    fp8 = make_core(path, quantization="fp8").runner.model
    assert all(isinstance(m, Fp8Linear) for m in fp8.model.layers.modules() if isinstance(m, QuantizedLinear))
    assert isinstance(fp8.model.layers[0].self_attn.qkv_proj, Fp8Linear)
    head_only = make_core(path, lm_head_quantization="int8").runner.model
    assert isinstance(head_only.lm_head, Int8Linear) and \
        not any(isinstance(m, QuantizedLinear) for m in head_only.model.layers.modules())


def test_bad_quantization_options_are_refused(path):
    with pytest.raises(ValueError, match="quantization_group_size must be one of"):
        make_core(path, quantization="int4", quantization_group_size=48)
    with pytest.raises(ValueError, match="quantization must be one of"):
        make_core(path, quantization="fp3")
    with pytest.raises(ValueError, match="fp8 has one scale per output row"):
        make_core(path, quantization="fp8", quantization_group_size=32)
    with pytest.raises(ValueError, match="gptq rounds int8 weights with one scale per output row"):
        make_core(path, quantization="int8", quantization_method="gptq", quantization_group_size=32)


def test_gptq_layers_hold_the_checkpoint_modules_rounded_integers(path):
    """A fused layer stacks the rounded rows of its checkpoint modules (q|k|v, gate|up) in
    its shard order; the head gets its own; GPTQ's integers differ from round to
    nearest's, the scales (max |w| / 127 per row) do not."""
    model = make_core(path, quantization="int8", lm_head_quantization="int8", quantization_method="gptq").runner.model
    rtn = make_core(path, quantization="int8", lm_head_quantization="int8").runner.model
    rounded = gptq_int8_weights(path, include_head=True)
    layer = model.model.layers[1]
    parts = {"self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"), "mlp.gate_up_proj": ("gate_proj", "up_proj"),
             "self_attn.o_proj": ("o_proj",), "mlp.down_proj": ("down_proj",)}
    for ours, names in parts.items():
        parent = ours.split(".")[0]
        want = torch.cat([rounded[f"model.layers.1.{parent}.{n}.q"] for n in names])
        got, plain = layer.get_submodule(ours), rtn.model.layers[1].get_submodule(ours)
        assert torch.equal(got.q, want) and not torch.equal(got.q, plain.q)
        torch.testing.assert_close(got.scale, plain.scale)
    assert torch.equal(model.lm_head.q, rounded["lm_head.q"])


def test_bad_quantization_method_is_refused(path):
    with pytest.raises(ValueError, match="gptq rounds int8 layers"):
        make_core(path, quantization="int4", quantization_method="gptq")
    with pytest.raises(ValueError, match="not with tp_size > 1"):
        make_core(path, quantization="int8", quantization_method="gptq", tp_size=2)
    with pytest.raises(ValueError, match="quantization_method must be one of"):
        make_core(path, quantization="int8", quantization_method="awq")
