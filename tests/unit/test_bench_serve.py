"""`radixflow bench serve`'s metrics from known timestamps and its workload generators."""

from __future__ import annotations

import math

import pytest

from runtime.bench.serve.client import _add_turn_input, render_text
from runtime.bench.serve.metrics import RequestRecord, percentile, stats, summarize
from runtime.bench.serve.workloads import WORKLOADS, Shape, build


def test_ttft_tpot_itl_e2e_from_known_timestamps():
    r = RequestRecord("w", 0, 0, start=10.0, end=11.0, chunk_times=[10.2, 10.4, 10.5, 11.0], completion_tokens=5)
    assert r.ttft == pytest.approx(0.2)
    assert r.e2e == pytest.approx(1.0)
    assert r.tpot == pytest.approx(0.8 / 4)  # (end - first chunk) / (tokens - 1)
    assert r.itls == pytest.approx([0.2, 0.1, 0.5])
    assert RequestRecord("w", 0, 0, start=0.0, end=1.0, completion_tokens=1, chunk_times=[0.5]).tpot is None


def test_percentiles_interpolate_like_numpy():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 90) == pytest.approx(4.6)
    assert percentile(xs, 99) == pytest.approx(4.96)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    assert stats([1.0, 3.0])["mean"] == 2.0


def test_summary_counts_throughput_cache_and_validity():
    ok = RequestRecord("json-schema", 0, 0, start=0.0, end=1.0, chunk_times=[0.5], prompt_tokens=100,
                       completion_tokens=10, cached_tokens=60, valid=True)
    bad = RequestRecord("json-schema", 1, 0, start=0.0, end=2.0, chunk_times=[1.0], prompt_tokens=100,
                        completion_tokens=30, cached_tokens=0, valid=False)
    failed = RequestRecord("json-schema", 2, 0, start=0.0, end=0.1, ok=False, error="HTTP 400: nope")
    s = summarize([ok, bad, failed], duration_s=2.0)
    assert (s["requests"], s["successes"], s["errors"], s["first_error"]) == (3, 2, 1, "HTTP 400: nope")
    assert s["output_token_throughput"] == 20.0 and s["input_token_throughput"] == 100.0
    assert s["request_throughput"] == 1.0
    assert s["cache_hit_rate"] == pytest.approx(0.3)
    assert s["valid_rate"] == 0.5
    assert s["ttft_s"]["median"] == pytest.approx(0.75)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_workloads_are_seeded(workload):
    a, b = build(workload, Shape().quick(), 0), build(workload, Shape().quick(), 0)
    assert [(s.system, [t.user for t in s.turns]) for s in a] == [(s.system, [t.user for t in s.turns]) for s in b]
    assert build(workload, Shape().quick(), 1)[0].turns[0].user != a[0].turns[0].user


def test_shared_prefix_groups_share_their_prefix_tokens():
    from transformers import AutoTokenizer

    from runtime.models.resolve import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None).path)
    shape = Shape(num_sessions=8, groups=2, shared_len=100, suffix_len=10)
    sessions = build("shared-prefix", shape, 0)
    rendered = {}
    for s in sessions:
        messages = [{"role": "system", "content": s.system}, {"role": "user", "content": s.turns[0].user}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        rendered.setdefault(s.group, []).append(ids)
    assert sorted(rendered) == [0, 1] and all(len(v) == 4 for v in rendered.values())

    def common(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    for group in rendered.values():  # the whole system prompt (>= 100 words) is shared within a group
        assert all(common(group[0], other) >= 100 for other in group[1:])
    assert common(rendered[0][0], rendered[1][0]) < 30  # and not across groups


def test_multi_turn_feeds_replies_back_and_tool_results_answer_calls():
    messages = [{"role": "system", "content": "s"}]
    session = build("multi-turn", Shape().quick(), 0)[0]
    _add_turn_input(messages, session.turns[0], [])
    messages.append({"role": "assistant", "content": "first reply"})
    _add_turn_input(messages, session.turns[1], [])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "Assistant: first reply\nUser: " in render_text(messages)

    agent = build("tool-agent", Shape().quick(), 0)[0]
    assert [t.tool_choice for t in agent.turns] == ["required", "none"] and agent.tools
    calls = [{"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]
    history = [{"role": "assistant", "content": None, "tool_calls": calls}]
    _add_turn_input(history, agent.turns[1], calls)
    assert history[-1] == {"role": "tool", "tool_call_id": "call_1", "content": agent.turns[1].tool_result}
    _add_turn_input(history, agent.turns[1], [])  # no call made: the result comes as the user
    assert history[-1]["role"] == "user" and history[-1]["content"].startswith("Tool result: ")


def test_rag_draws_passages_from_a_shared_corpus():
    sessions = build("rag", Shape(num_sessions=10, passages=3, corpus=5, passage_len=20), 0)
    passages = [line for s in sessions for line in s.turns[0].user.splitlines() if line.startswith("[")]
    assert len(passages) == 30 and len(set(passages)) <= 5


def _row(server, workload, repeat, tok_s, ttft):
    stat = {"mean": ttft, "median": ttft, "p90": ttft, "p99": ttft}
    return {"server": server, "workload": workload, "max_concurrency": 8, "repeat": repeat, "summary": {
        "requests": 4, "successes": 4, "errors": 0, "first_error": None, "request_throughput": 1.0,
        "output_token_throughput": tok_s, "cache_hit_rate": None, "valid_rate": None, "tool_calls": 0,
        "ttft_s": stat, "tpot_s": stat, "itl_s": stat, "e2e_s": stat}, "e2e_s": [ttft], "ttft_s": [ttft]}


def test_compare_takes_medians_over_repeats_and_ratios_against_each_peer():
    from runtime.bench.compare import medians
    from runtime.bench.serve.report import compare_markdown

    rows = [_row("radixflow", "rag", 0, 100.0, 0.2), _row("radixflow", "rag", 1, 120.0, 0.4),
            _row("radixflow", "rag", 2, 110.0, 0.3), _row("vllm", "rag", 0, 50.0, 0.6),
            _row("vllm", "rag", 1, 60.0, 0.6)]
    med = medians(rows)
    assert med["radixflow"]["rag"]["output_token_throughput"] == 110.0 and med["radixflow"]["rag"]["runs"] == 3
    assert med["vllm"]["rag"]["output_token_throughput"] == 55.0
    report = {"model": {"name": "m", "hf_dir": "/m", "gguf": None}, "medians": med, "rows": rows,
              "servers": {"radixflow": {"version": "0.1.0", "startup_s": [5.0]},
                          "vllm": {"version": "0.32", "startup_s": [100.0], "resident_mb": [900.0]},
                          "llama.cpp": {"unavailable": "llama.cpp serves GGUF files; this checkpoint has none"}}}
    md = compare_markdown(report)
    assert "| rag | 110.0 | 55.0 | 2.00x |" in md  # ours / vllm output tokens/s
    assert "| rag | 300 | 600 | 2.00x |" in md  # vllm TTFT / ours
    assert "not run: llama.cpp serves GGUF files" in md
    assert "ahead of every peer on every workload" in md


def test_compare_says_where_radixflow_is_behind_and_why_from_the_profile():
    from runtime.bench.compare import medians
    from runtime.bench.serve.report import compare_markdown

    rows = [_row("radixflow", "rag", 0, 40.0, 0.2), _row("vllm", "rag", 0, 50.0, 0.6),
            _row("radixflow", "multi-turn", 0, 90.0, 0.2), _row("vllm", "multi-turn", 0, 60.0, 0.6)]
    profile = {"busy_samples": 10, "idle_samples": 0, "functions": [],
               "stages": {"model forward": 0.6, "attention": 0.35, "scheduler": 0.03, "IPC / loop": 0.02}}
    report = {"model": {"name": "m", "hf_dir": "/m", "gguf": None}, "medians": medians(rows), "rows": rows,
              "servers": {"radixflow": {"profile": profile}, "vllm": {}}}
    md = compare_markdown(report)
    assert "behind on output tokens/s: rag vs vllm (0.80x)." in md
    report["servers"]["vllm"]["notes"] = {"rag": "it lacks something rag needs"}  # not a like-for-like race
    md = compare_markdown(report)
    assert "ahead of every peer" in md
    report["servers"]["vllm"]["notes"] = {}
    md = compare_markdown(report)
    assert "behind on output tokens/s: rag vs vllm (0.80x)." in md
    assert "multi-turn vs vllm" not in md
    assert "60% in model forward of its busy time, 35% in attention, 3% in scheduler" in md
    assert "scheduling, batch building and IPC take 5%, so the gap is the model's own ops" in md


def test_profile_folds_stacks_into_stage_and_function_shares():
    from runtime.bench.profile import fold

    loop = "process 1:\"python\";thread (0x1);_loop (runtime/engine/engine_loop.py:170)"
    collapsed = "\n".join([
        f"{loop};step (runtime/engine/scheduler.py:120);run (runtime/engine/model_runner.py:90);"
        "forward (runtime/models/llama.py:80);linear (torch/nn/functional.py:1) 6",
        f"{loop};step (runtime/engine/scheduler.py:120);sample (runtime/engine/sampler.py:200) 3",
        f"{loop};step (runtime/engine/scheduler.py:120);_schedule (runtime/engine/scheduler.py:140) 1",
        f"{loop};_drain (runtime/engine/engine_loop.py:220);poll (multiprocessing/connection.py:257) 10",
    ])
    out = fold(collapsed)
    assert (out["busy_samples"], out["idle_samples"]) == (10, 10)
    assert out["stages"] == {"model forward": 0.6, "sampler": 0.3, "scheduler": 0.1}
    assert out["functions"][0] == ("forward", 0.6)
