"""Speculative decoding through the engine: outputs identical with drafts on and off
(tiny random float32 model, real tokenizer), no leaked KV, the stop/stream/logprob paths."""

import json
import random

import jsonschema
import pytest

from runtime.core import AbortRequest, GenerateRequest, SamplingParams
from runtime.demo.checkpoint import demo_model_path
from tests.helpers import make_core, random_prompts, run_core, without_step_timing

ALGORITHMS = ("ngram", "suffix", "grammar", "auto")
ORDER = {"type": "object", "additionalProperties": False,
         "required": ["order_identifier", "shipping_country", "quantity"],
         "properties": {"order_identifier": {"type": "integer", "minimum": 0, "maximum": 999},
                        "shipping_country": {"enum": ["france", "japan", "brazil"]},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 9}}}


@pytest.fixture(scope="module")
def path():
    return demo_model_path("qwen2", "tiny", "float32")


def copy_prompts(seed: int = 0) -> list[list[int]]:
    """Prompts that repeat themselves (so prompt lookup finds matches) plus plain random ones."""
    rng = random.Random(seed)
    prompts = []
    for n in (12, 40, 90):
        chunk = [rng.randrange(1000, 60000) for _ in range(n)]
        prompts.append(chunk + chunk[:n // 2])
    return prompts + random_prompts(lens=(3, 25), seed=seed)


VARIED = [
    {"max_new_tokens": 48, "temperature": 0.0, "ignore_eos": True},
    {"max_new_tokens": 40, "temperature": 0.0, "min_new_tokens": 30},  # EOS banned for 30 tokens
    {"max_new_tokens": 30, "temperature": 0.0, "repetition_penalty": 1.3, "frequency_penalty": 0.2},
    {"max_new_tokens": 7, "temperature": 0.0, "ignore_eos": True},  # shorter than one full draft
    {"max_new_tokens": 64, "temperature": 0.0, "json_schema": json.dumps(ORDER)},
    {"max_new_tokens": 24, "temperature": 0.0, "regex": r"(ab|cd){3,9}x[0-9]{2,4}"},
]


@pytest.fixture(scope="module")
def reference(path):
    """Outputs with every form of drafting off (jump-forward included)."""
    core = make_core(path, disable_jump_forward=True)
    prompts = copy_prompts() + copy_prompts(seed=1)
    params = (VARIED * 2)[:len(prompts)]
    twice = run_core(core, prompts, params), run_core(core, prompts, params)
    assert core.scheduler.stats["verify_steps"] == 0
    return prompts, params, twice


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_greedy_outputs_identical(path, reference, algorithm, page_size):
    prompts, params, (first, second) = reference
    assert all(first[r]["output_ids"] == second[r]["output_ids"] for r in first)  # deterministic itself
    core = without_step_timing(make_core(path, speculative_algorithm=algorithm, speculative_num_draft_tokens=5,
                                         page_size=page_size))
    for expected in (first, second):  # the second round also has the suffix index and the radix cache warm
        got = run_core(core, prompts, params)
        for rid in expected:
            assert got[rid]["output_ids"] == expected[rid]["output_ids"], (rid, params[int(rid[1:])])
            assert got[rid]["finish_reason"].kind == expected[rid]["finish_reason"].kind
    stats = core.scheduler.stats
    assert stats["verify_steps"] > 0 and stats["accepted_draft_tokens"] > 20, stats
    core.scheduler.check_no_leaks()


def test_constrained_outputs_validate_with_every_source(path, reference):
    prompts, params, (expected, _) = reference
    core = make_core(path, speculative_algorithm="auto")
    got = run_core(core, prompts, params)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    for rid, p in zip(expected, params):
        if "json_schema" in p and got[rid]["finish_reason"].kind.value == "stop":
            jsonschema.validate(json.loads(tok.decode(got[rid]["output_ids"], skip_special_tokens=True)), ORDER)


def test_logprobs_match_decoding_without_drafts(path):
    prompts = copy_prompts()[:3]
    params = {"max_new_tokens": 32, "temperature": 0.0, "ignore_eos": True}
    off = run_core(make_core(path), prompts, params, return_logprob=True, top_logprobs_num=3)
    core = make_core(path, speculative_algorithm="ngram")
    on = run_core(core, prompts, params, return_logprob=True, top_logprobs_num=3)
    assert core.scheduler.stats["accepted_draft_tokens"] > 0
    for rid in off:
        assert on[rid]["output_ids"] == off[rid]["output_ids"]
        assert on[rid]["logprobs"] == pytest.approx(off[rid]["logprobs"], abs=1e-4)
        assert [[t for _, t in top] for top in on[rid]["top_logprobs"]] == \
            [[t for _, t in top] for top in off[rid]["top_logprobs"]]


@pytest.mark.parametrize("algorithm", ["ngram", "auto"])
def test_sampled_requests_finish_and_keep_the_grammar(path, algorithm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    core = make_core(path, speculative_algorithm=algorithm)
    prompts = copy_prompts()
    params = [{"max_new_tokens": 48, "temperature": 0.8, "top_p": 0.9, "sampling_seed": i,
               **({"json_schema": json.dumps(ORDER)} if i % 2 else {"ignore_eos": True})}
              for i in range(len(prompts))]
    res = run_core(core, prompts, params)
    for i, rid in enumerate(sorted(res)):
        if i % 2 == 0:
            assert len(res[rid]["output_ids"]) == 48
        elif res[rid]["finish_reason"].kind.value == "stop":
            jsonschema.validate(json.loads(tok.decode(res[rid]["output_ids"], skip_special_tokens=True)), ORDER)
    assert core.scheduler.stats["verify_steps"] > 0
    core.scheduler.check_no_leaks()


def test_no_leaked_slots_after_aborts_mid_verify(path):
    """Requests aborted between verify steps, others finishing in the same batches, with
    the radix cache holding earlier turns: every slot is free or cached at the end."""
    core = make_core(path, speculative_algorithm="auto", page_size=4, max_total_tokens=2048)
    prompts = copy_prompts() + copy_prompts(seed=3)
    sp = [SamplingParams(max_new_tokens=40 + 7 * i, temperature=0.0 if i % 3 else 1.0, ignore_eos=True)
          for i in range(len(prompts))]
    for i, p in enumerate(prompts):
        core.handle(GenerateRequest(rid=f"r{i}", input_ids=p, sampling_params=sp[i]))
    finished, steps = set(), 0
    while core.scheduler.has_work:
        for out in core.step():
            if out.finished:
                finished.add(out.rid)
        steps += 1
        if steps in (6, 9, 14):  # abort a running request while others verify drafts
            victim = next(r.rid for r in core.scheduler.running if r.rid not in finished)
            (out,) = core.handle(AbortRequest(rid=victim))
            assert out.finished and out.finish_reason.kind.value == "abort"
            finished.add(victim)
    assert len(finished) == len(prompts)
    assert core.scheduler.stats["verify_steps"] > 0
    core.scheduler.check_no_leaks()


def test_engine_stop_strings_and_streaming_unchanged(path):
    """Stop strings are matched on text in the caller's process; a step that emits several
    tokens must stop at the same place and stream the same text."""
    from runtime.engine.api import Engine

    prompt = copy_prompts()[2]
    base = {"max_new_tokens": 40, "temperature": 0.0, "ignore_eos": True}
    with Engine(str(path), max_total_tokens=4096, disable_jump_forward=True) as off:
        free = off.generate(input_ids=prompt, sampling_params=base)
        stop = free["text"][12:15]
        expected = off.generate(input_ids=prompt, sampling_params={**base, "stop": [stop]})
    assert expected["meta_info"]["finish_reason"]["type"] == "stop"
    with Engine(str(path), max_total_tokens=4096, speculative_algorithm="ngram") as on:
        got = on.generate(input_ids=prompt, sampling_params={**base, "stop": [stop]})
        chunks = list(on.generate(input_ids=prompt, sampling_params=base, stream=True))
        assert on.get_server_info()["accepted_draft_tokens"] > 0
    assert got["text"] == expected["text"]
    assert got["meta_info"]["finish_reason"] == expected["meta_info"]["finish_reason"]
    assert chunks[-1]["text"] == free["text"]  # chunks carry the text so far, as SGLang's do
    assert all(a["text"] == b["text"][:len(a["text"])] for a, b in zip(chunks, chunks[1:]))
    assert len(chunks) < len(free["output_ids"])  # some events carried several tokens


@pytest.mark.parametrize("algorithm", ["ngram", "suffix"])
def test_bf16_batch_outputs_identical_with_a_shared_prefix(path, algorithm):
    """bf16 has no slack for reordered sums: a verify row must get exactly the bits of a
    decode row, also in a batch that reads its shared prefix once (cascade attention).
    An anchor request outlives the others, so the batch never shrinks to one request (a
    lone request attends without the cascade split, which changes last bits; that case
    is exact only in float32)."""
    rng = random.Random(7)
    shared = [rng.randrange(1000, 60000) for _ in range(150)]  # > 2 x DECODE_KV_ALIGN: read once
    prompts = [shared + p for p in copy_prompts(seed=3)]
    params = [{"max_new_tokens": n, "temperature": 0.0, "ignore_eos": True} for n in (90, 50, 120, 64, 80, 40)]
    params = (params * 2)[:len(prompts) - 1] + [{"max_new_tokens": 200, "temperature": 0.0, "ignore_eos": True}]
    anchor = f"r{len(prompts) - 1}"
    runs = {}
    for algo in ("none", algorithm):
        core = without_step_timing(make_core(path, dtype="bfloat16", speculative_algorithm=algo,
                                             disable_jump_forward=True))
        runs[algo] = [run_core(core, prompts, params) for _ in range(2)]  # round 2: the suffix index is warm
        if algo != "none":
            assert core.scheduler.stats["accepted_draft_tokens"] > 10, core.scheduler.stats
        core.scheduler.check_no_leaks()
    for off, on in zip(runs["none"], runs[algorithm]):
        assert {r: o["output_ids"] for r, o in on.items() if r != anchor} == \
            {r: o["output_ids"] for r, o in off.items() if r != anchor}
