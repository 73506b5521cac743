"""SGLang-native endpoints: /generate and the control/introspection routes."""

from __future__ import annotations

import json

SP = {"max_new_tokens": 4, "temperature": 0}


def test_generate_text(http):
    r = http.post("/generate", json={"text": "Hello", "sampling_params": SP})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) >= {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    assert meta["completion_tokens"] == len(out["output_ids"]) <= 4
    assert meta["finish_reason"]["type"] in ("stop", "length")


def test_generate_input_ids_matches_text(http):
    ids = http.post("/tokenize", json={"prompt": "Hello world"}).json()["tokens"]
    a = http.post("/generate", json={"text": "Hello world", "sampling_params": SP}).json()
    b = http.post("/generate", json={"input_ids": ids, "sampling_params": SP}).json()
    assert a["output_ids"] == b["output_ids"]
    assert http.post("/detokenize", json={"tokens": ids}).json()["text"] == "Hello world"


def test_generate_batch_and_n(http):
    r = http.post("/generate", json={"text": ["a", "b", "c"], "sampling_params": SP})
    assert r.status_code == 200 and len(r.json()) == 3
    r = http.post("/generate", json={"text": "a", "sampling_params": {**SP, "n": 2, "temperature": 1.0}})
    assert isinstance(r.json(), list) and len(r.json()) == 2
    r = http.post("/generate", json={"input_ids": [[9707], [1052, 1879]],
                                     "sampling_params": [SP, {**SP, "max_new_tokens": 1}]})
    assert [x["meta_info"]["completion_tokens"] for x in r.json()][1] == 1


def test_generate_stream(http):
    with http.stream("POST", "/generate", json={"text": "Hello", "sampling_params": SP, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[5:]) for line in lines[:-1]]
    texts = [c["text"] for c in chunks]
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))  # cumulative text
    assert chunks[-1]["meta_info"]["finish_reason"] is not None
    full = http.post("/generate", json={"text": "Hello", "sampling_params": SP}).json()
    assert texts[-1] == full["text"]


def test_generate_logprobs(http):
    r = http.post("/generate", json={"text": "The quick brown fox", "sampling_params": {**SP, "max_new_tokens": 2},
                                     "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 2,
                                     "return_text_in_logprobs": True}).json()
    meta = r["meta_info"]
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]
    assert meta["input_token_logprobs"][0][0] is None  # no logprob for the first prompt token
    assert len(meta["output_token_logprobs"]) == 2
    lp, tid, text = meta["output_token_logprobs"][0]
    assert lp <= 0 and tid == r["output_ids"][0] and isinstance(text, str)
    assert len(meta["output_top_logprobs"][0]) == 2


def test_select_style_scoring(http):
    """What sgl.select sends: a batch, max_new_tokens 0, prompt logprobs with text."""
    r = http.post("/generate", json={"text": ["Pick: yes", "Pick: no"],
                                     "sampling_params": {"max_new_tokens": 0, "temperature": 0},
                                     "return_logprob": True, "return_text_in_logprobs": True,
                                     "logprob_start_len": 1})
    assert r.status_code == 200, r.text
    for item in r.json():
        assert item["output_ids"] == [] and item["meta_info"]["input_token_logprobs"]


def test_model_and_server_info(http, server):
    info = http.get("/get_model_info").json()
    assert info["is_generation"] is True and info["model_path"]
    srv = server.info()
    assert srv["max_total_tokens"] == 24576 and srv["context_length"] == 2048
    assert srv["max_running_requests"] == 64 and "available_tokens" in srv and "version" in srv


def test_flush_cache_and_health(http):
    assert http.get("/health").status_code == 200
    assert http.get("/health_generate").status_code == 200
    assert http.post("/flush_cache").status_code == 200


def test_metrics(http):
    http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                                            "stream": True})
    schema = {"type": "object", "properties": {"first_name": {"type": "string"}, "last_name": {"type": "string"}},
              "required": ["first_name", "last_name"], "additionalProperties": False}
    http.post("/v1/chat/completions", json={  # the grammar forces the keys: drafted and verified (jump-forward)
        "messages": [{"role": "user", "content": "x"}], "max_tokens": 40,
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}})
    body = http.get("/metrics").text
    for name in ("radixflow:num_requests_running", "radixflow:num_requests_waiting", "radixflow:token_usage",
                 "radixflow:cache_hit_rate", "radixflow:prompt_tokens_total", "radixflow:generation_tokens_total",
                 "radixflow:time_to_first_token_seconds_bucket", "radixflow:inter_token_latency_seconds_bucket",
                 "radixflow:e2e_request_latency_seconds_bucket", "radixflow:spec_verify_steps"):
        assert name in body, name
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
              if line.startswith("radixflow:spec_")}
    assert values["radixflow:spec_draft_tokens"] >= values["radixflow:spec_accepted_tokens"] > 0, values
    assert 0 < values["radixflow:spec_acceptance_rate"] <= 1
    # the gauges routers score replicas on, under vLLM's names (llm-d), equal to ours
    gauges = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
              if line.startswith(("vllm:", "radixflow:num_requests", "radixflow:token_usage"))}
    assert gauges["vllm:num_requests_running"] == gauges["radixflow:num_requests_running"]
    assert gauges["vllm:num_requests_waiting"] == gauges["radixflow:num_requests_waiting"]
    assert gauges["vllm:kv_cache_usage_perc"] == gauges["radixflow:token_usage"]
    assert 0 <= gauges["vllm:kv_cache_usage_perc"] <= 1
