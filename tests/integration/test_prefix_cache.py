"""The radix cache inside the engine: multi-turn reuse, n>1 sharing, eviction under
pressure, namespaces, page-hash introspection."""

import pytest
from transformers import AutoTokenizer

from runtime.cache.page_hash import prefix_page_hashes
from runtime.demo.checkpoint import demo_model_path
from tests.helpers import make_core, random_prompts, run_core

GREEDY = {"max_new_tokens": 24, "temperature": 0.0}


@pytest.fixture(scope="module")
def path():
    return demo_model_path("qwen2", "tiny", "float32")


@pytest.mark.parametrize("page_size", [1, 4])
def test_five_turn_chat_hits_previous_prompt_and_reply(path, page_size):
    """Turn k+1 = turn k's prompt + its reply + the ChatML of a new user turn. The
    conversation is kept in token space: random weights emit tokens whose text does
    not re-tokenize to the same ids, which a real model's replies do."""
    tok = AutoTokenizer.from_pretrained(path)
    core = make_core(path, page_size=page_size)
    ids = tok.apply_chat_template([{"role": "system", "content": "You are terse."},
                                   {"role": "user", "content": "What is 0 + 0?"}],
                                  add_generation_prompt=True, tokenize=False)
    ids = tok.encode(ids, add_special_tokens=False)
    previous_len = 0
    for turn in range(5):
        out = run_core(core, [ids], {**GREEDY, "stop_token_ids": [151645]})["r0"]
        if turn:
            # all of turn k (prompt + reply, bar its last token) is reused, to within a page
            assert out["cached_tokens"] >= previous_len - 1 - page_size, (turn, out["cached_tokens"], previous_len)
        previous_len = len(ids) + len(out["output_ids"])
        reply = out["output_ids"] if out["output_ids"][-1] == 151645 else out["output_ids"] + [151645]
        ids = ids + reply + tok.encode(f"\n<|im_start|>user\nWhat is {turn} + {turn}?<|im_end|>\n"
                                       "<|im_start|>assistant\n", add_special_tokens=False)
    core.scheduler.check_no_leaks()


def test_n8_computes_the_shared_prompt_once(path):
    core = make_core(path)
    prompt = random_prompts(lens=(300,), seed=5)[0]
    res = run_core(core, [prompt] * 8, [{"max_new_tokens": 8, "temperature": 1.0, "sampling_seed": i}
                                        for i in range(8)])
    cached = [res[f"r{i}"]["cached_tokens"] for i in range(8)]
    assert sorted(cached) == [0] + [299] * 7, cached
    # computed once in full; each sibling computes only its last prompt token (for its logits)
    assert core.scheduler.stats["prompt_tokens"] - core.scheduler.stats["cached_tokens"] == 300 + 7
    core.scheduler.check_no_leaks()


def test_pool_pressure_evicts_and_stays_correct(path):
    prompts = random_prompts(lens=[90, 120, 60, 150, 80, 110, 70, 130] * 2, seed=11)
    cold = run_core(make_core(path, disable_radix_cache=True), prompts, GREEDY)
    small = make_core(path, max_total_tokens=700, max_running_requests=4)
    hot = run_core(small, prompts, GREEDY)
    again = run_core(small, prompts[::-1], GREEDY)  # reversed: recent ones still cached
    for i in range(len(prompts)):
        assert hot[f"r{i}"]["output_ids"] == cold[f"r{i}"]["output_ids"]
        assert again[f"r{len(prompts) - 1 - i}"]["output_ids"] == cold[f"r{i}"]["output_ids"]
    assert small.cache.total_size() <= 700
    assert sum(again[f"r{i}"]["cached_tokens"] for i in range(len(prompts))) > 0
    small.scheduler.check_no_leaks()


def test_cache_salt_isolates_tenants(path):
    core = make_core(path)
    prompt = random_prompts(lens=(200,), seed=2)[0]
    a1 = run_core(core, [prompt], GREEDY, cache_salt="tenant-a")["r0"]
    b1 = run_core(core, [prompt], GREEDY, cache_salt="tenant-b")["r0"]
    plain = run_core(core, [prompt], GREEDY)["r0"]
    a2 = run_core(core, [prompt], GREEDY, cache_salt="tenant-a")["r0"]
    assert a1["cached_tokens"] == b1["cached_tokens"] == plain["cached_tokens"] == 0
    assert a2["cached_tokens"] == 199
    assert a1["output_ids"] == b1["output_ids"] == a2["output_ids"] == plain["output_ids"]
    hashes = prefix_page_hashes(prompt, 1, "tenant-a")
    assert core.cache.lookup_page_hashes(hashes) >= 199
    assert core.cache.lookup_page_hashes(prefix_page_hashes(prompt, 1, "tenant-c")) == 0
    core.scheduler.check_no_leaks()


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "dfs-weight"])
def test_policies_serve_everything(path, policy):
    shared = random_prompts(lens=(120,), seed=4)[0]
    prompts = [shared + p for p in random_prompts(lens=(5, 9, 14, 3, 7, 11), seed=6)] + \
        random_prompts(lens=(50, 60), seed=8)
    core = make_core(path, schedule_policy=policy, max_running_requests=3)
    ref = run_core(make_core(path, disable_radix_cache=True), prompts, GREEDY)
    got = run_core(core, prompts, GREEDY)
    assert all(got[k]["output_ids"] == ref[k]["output_ids"] for k in ref)
    assert sum(got[k]["cached_tokens"] for k in got) >= 5 * 119
    core.scheduler.check_no_leaks()


def test_flush_refused_while_running_then_allowed(path):
    from runtime.core import FlushCache, GenerateRequest, SamplingParams

    core = make_core(path)
    core.handle(GenerateRequest("x", [1, 2, 3], SamplingParams(max_new_tokens=50, ignore_eos=True)))
    core.step()
    reply = core.handle(FlushCache())[0]
    assert not reply.ok and "running" in reply.error
    while core.scheduler.has_work:
        core.step()
    assert core.handle(FlushCache())[0].ok
    assert core.cache.total_size() == 0
    core.scheduler.check_no_leaks()
