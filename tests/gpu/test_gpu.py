"""The engine's GPU path on a CUDA device (run by tests/gpu/run_gpu_check.sh; skipped
elsewhere): the triton attention backend, decode steps replayed from CUDA graphs, the fused
element-wise kernels and the grammar-mask kernel, token-identical to transformers in
float32 (the kernels' dots are exact float32 products there, not TF32)."""

import json

import pytest
import torch

from runtime.demo.checkpoint import demo_model_path
from runtime.kernels.backend import TritonBackend
from tests.helpers import ARCHS, hf_greedy, make_core, random_prompts, run_core

NO_GPU = "needs a CUDA device (tests/gpu/run_gpu_check.sh)"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)]
NEW_TOKENS = 16


def count_replays(graphs) -> list:
    sizes, original = [], graphs.run
    graphs.run = lambda fb: sizes.append(fb.batch_size) or original(fb)
    return sizes


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("page_size", [1, 16])
def test_greedy_matches_transformers_with_graphs_and_kernels(arch, page_size):
    path = demo_model_path(arch, "tiny", "float32")
    prompts = random_prompts(seed=ARCHS.index(arch))
    refs = [hf_greedy(path, p, NEW_TOKENS) for p in prompts]  # transformers on CPU, float32
    core = make_core(path, dtype="float32", page_size=page_size)  # auto on CUDA: triton, graphs, fused kernels
    runner = core.runner
    assert type(runner.attn) is TritonBackend and runner.decode_graphs.graphs
    assert runner.model.elementwise.__name__ == "runtime.kernels.elementwise"
    replays = count_replays(runner.decode_graphs)
    got = run_core(core, prompts, {"max_new_tokens": NEW_TOKENS, "temperature": 0.0}, stagger_steps=2,
                   return_logprob=True)
    assert replays, "decode steps should replay the captured graphs"
    for i, (ref_ids, ref_lps) in enumerate(refs):
        assert got[f"r{i}"]["output_ids"] == ref_ids, f"{arch}: prompt {i} diverged"
        assert max(abs(a - b) for a, b in zip(got[f"r{i}"]["logprobs"], ref_lps)) < 1e-3
    core.scheduler.check_no_leaks()


def test_cascade_and_graphs_agree_over_a_shared_prefix():
    """A batch behind a cached prefix: eager steps read it once (cascade), graph steps per
    row; both equal transformers."""
    path = demo_model_path("qwen2", "tiny", "float32")
    prefix = random_prompts(lens=[300], seed=5)[0]
    prompts = [prefix + tail for tail in random_prompts(lens=[3, 9, 17, 30], seed=6)]
    refs = [hf_greedy(path, p, NEW_TOKENS)[0] for p in prompts]
    for options in ({"disable_cuda_graph": True}, {}):
        core = make_core(path, dtype="float32", **options)
        run_core(core, [prefix], {"max_new_tokens": 1, "temperature": 0.0})
        got = run_core(core, prompts, {"max_new_tokens": NEW_TOKENS, "temperature": 0.0})
        assert [got[f"r{i}"]["output_ids"] for i in range(4)] == refs, options
        core.scheduler.check_no_leaks()


def test_bf16_default_and_json_schema_on_device():
    """bf16 (the GPU default) through graphs, with a grammar-constrained request beside plain
    ones: the mask kernel runs on the device and the output parses."""
    path = demo_model_path("qwen2", "tiny", "float32")
    core = make_core(path)
    assert core.runner.dtype == torch.bfloat16
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    params = [{"max_new_tokens": 24, "temperature": 0.0, "json_schema": json.dumps(schema)},
              {"max_new_tokens": 24, "temperature": 0.0, "ignore_eos": True}]
    got = run_core(core, random_prompts(lens=(12, 40), seed=2), params)
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(path).decode(got["r0"]["output_ids"], skip_special_tokens=True)
    if got["r0"]["finish_reason"].kind.value == "stop":
        assert isinstance(json.loads(text)["n"], int)
    assert len(got["r1"]["output_ids"]) == 24
    core.scheduler.check_no_leaks()
