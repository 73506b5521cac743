"""Tensor parallelism with 2 ranks on CPU (gloo): rank 0 in this process (or in the engine
process), rank 1 a worker process. Outputs must equal the same engine at TP 1 in float32,
greedy, for every architecture, with the radix cache, chunked prefill, paged KV, constrained
decoding and speculative verify steps on."""

import json
import time

import psutil
import pytest
import torch

import runtime
from runtime.demo.checkpoint import demo_model_path
from runtime.layers.parallel import TensorParallel
from tests.helpers import ARCHS, make_core, random_prompts, run_core, without_step_timing

pytestmark = pytest.mark.slow

GREEDY = {"max_new_tokens": 12, "temperature": 0.0}
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99}}}
# chunked prefill (64-token chunks), 16-token pages shared by the radix cache
OPTIONS = {"chunked_prefill_size": 64, "max_prefill_tokens": 128, "page_size": 16}


def workload():
    """Unrelated prompts, then prompts behind a shared 150-token prefix (radix hits), and
    two constrained requests (JSON schema, regex). -> (waves of prompts, waves of params)."""
    prefix = random_prompts(lens=[150], seed=5)[0]
    first = random_prompts(lens=(1, 17, 100, 233), seed=11) + [prefix + [7, 8, 9]]
    second = [prefix + tail for tail in random_prompts(lens=(4, 20, 70), seed=6)] + random_prompts(lens=(9, 30, 12, 25),
                                                                                                 seed=7)
    params = [GREEDY] * 5 + [{**GREEDY, "max_new_tokens": 40, "json_schema": json.dumps(PERSON)},
                             {**GREEDY, "regex": r"(sunny|rainy) [0-9]{2}"}]
    return [first, second], [[GREEDY] * len(first), params]


def run_waves(core, waves, params):
    results = []
    for prompts, wave_params in zip(waves, params):
        results.append(run_core(core, prompts, wave_params))
    core.scheduler.check_no_leaks()
    return results


def outputs(results):
    return [{rid: r["output_ids"] for rid, r in wave.items()} for wave in results]


def parameter_count(core) -> int:
    return sum(p.numel() for p in core.runner.model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_tp2_outputs_equal_tp1_in_float32(arch):
    path = demo_model_path(arch, "tiny", "float32")
    waves, params = workload()
    single = make_core(path, **OPTIONS)
    reference = outputs(run_waves(single, waves, params))
    core = make_core(path, tp_size=2, **OPTIONS)
    try:
        assert core.runner.tp == TensorParallel(0, 2)
        # rank 0 holds half of every sharded weight (norms are replicated: a few hundred numbers)
        assert parameter_count(core) < 0.51 * parameter_count(single)
        assert core.runner.pool.k_buffers[0].shape[0] == 1  # the tiny models have 2 KV heads: one per rank
        got = run_waves(core, waves, params)
    finally:
        core.runner.close()
    assert outputs(got) == reference, f"{arch}: TP 2 diverged from TP 1"
    assert all(got[1][f"r{i}"]["cached_tokens"] >= 144 for i in range(3)), "the shared prefix should hit the cache"
    assert got[1]["r6"]["finish_reason"].kind.value == "stop", "the regex ends its output"


def test_tp2_speculative_verify_steps_equal_tp1():
    path = demo_model_path("qwen2", "tiny", "float32")
    chunk = random_prompts(lens=[60], seed=3)[0]
    prompts = [chunk + chunk[:30], chunk[:20] + chunk[:20]] + random_prompts(lens=(7, 40), seed=4)
    options = {"speculative_algorithm": "auto", "speculative_num_draft_tokens": 4}
    params = {"max_new_tokens": 24, "temperature": 0.0}
    reference = run_core(without_step_timing(make_core(path)), prompts, params)
    core = without_step_timing(make_core(path, tp_size=2, **options))
    try:
        got = run_core(core, prompts, params)
        verified = core.scheduler.stats["accepted_draft_tokens"]
    finally:
        core.runner.close()
    assert {k: v["output_ids"] for k, v in got.items()} == {k: v["output_ids"] for k, v in reference.items()}
    assert verified > 0, "drafts should have been accepted"


def test_bfloat16_tp2_runs_and_agrees_with_tp1_up_to_near_ties():
    """bf16 sums in another order across ranks, so only near-agreement is promised there:
    the greedy tokens are the same until the first position where they differ, and there
    each run's token is among the other's top 5 (a near-tie of the random-weight model's
    flat distribution, not a wrong computation). How many tokens then agree is chance."""
    path = demo_model_path("qwen2", "tiny", "float32")
    prompts = random_prompts(lens=(5, 40, 120), seed=2)
    options = {"return_logprob": True, "top_logprobs_num": 5}
    reference = run_core(make_core(path, dtype="bfloat16"), prompts, GREEDY, **options)
    core = make_core(path, dtype="bfloat16", tp_size=2)
    try:
        got = run_core(core, prompts, GREEDY, **options)
    finally:
        core.runner.close()
    for rid, ref in reference.items():
        ours = got[rid]
        assert len(ours["output_ids"]) == len(ref["output_ids"]) == GREEDY["max_new_tokens"], rid
        diverged = [i for i, (a, b) in enumerate(zip(ours["output_ids"], ref["output_ids"])) if a != b]
        if diverged:
            i = diverged[0]
            assert ours["output_ids"][i] in [t for _, t, *_ in ref["top_logprobs"][i]], (rid, i)
            assert ref["output_ids"][i] in [t for _, t, *_ in ours["top_logprobs"][i]], (rid, i)


def test_a_size_that_does_not_divide_the_heads_is_refused_before_any_worker_starts():
    path = demo_model_path("qwen2", "tiny", "float32")  # 4 heads, 2 KV heads
    start = time.time()
    with pytest.raises(ValueError, match="--tp-size 3 does not divide the model's 4 attention heads"):
        make_core(path, tp_size=3)
    assert time.time() - start < 5
    assert not torch.distributed.is_initialized()


def tp_workers_of(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True)
            if "runtime.engine.tensor_parallel" in " ".join(p.cmdline())]


def test_the_engine_process_with_tp2_serves_and_its_worker_ends_with_it():
    engine = runtime.Engine(str(demo_model_path("llama", "tiny", "float32")), tp_size=2, max_total_tokens=4096)
    try:
        workers = tp_workers_of(engine._process.pid)
        assert len(workers) == 1
        out = engine.generate(input_ids=[1, 2, 3, 4], sampling_params={"max_new_tokens": 6, "temperature": 0.0,
                                                                      "ignore_eos": True})
        assert out["meta_info"]["completion_tokens"] == 6
        assert engine.get_server_info()["max_total_tokens"] == 4096
    finally:
        engine.shutdown()
    psutil.wait_procs(workers, timeout=10)
    assert not any(w.is_running() for w in workers), "the worker rank outlived the engine"


def test_a_killed_engine_takes_its_worker_with_it():
    engine = runtime.Engine(str(demo_model_path("llama", "tiny", "float32")), tp_size=2, max_total_tokens=4096)
    workers = tp_workers_of(engine._process.pid)
    engine._process.proc.kill()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    engine.shutdown()
    assert workers and not alive, "an orphaned worker rank must exit when rank 0 dies"
