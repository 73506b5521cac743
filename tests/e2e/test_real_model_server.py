"""`radixflow serve` with no --model-path serves SmolLM2-135M-Instruct: real answers over
the OpenAI API, and tools through the system-prompt format (its chat template has no
tool section) with calls the real model fills in."""

from __future__ import annotations

import json

import httpx
import pytest

from runtime.config import cpu_has_fast_bf16
from runtime.models.resolve import DEFAULT_MODEL_NAME
from tests.e2e.harness import start_server, stop_server

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a given city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name"}},
                   "required": ["city"]}}}
PARIS = [{"role": "user", "content": "What is the weather like in Paris?"}]


@pytest.fixture(scope="module")
def real_server():
    srv = start_server(model_args=[])  # the README's command: the default model
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(real_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{real_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_serves_smollm2_and_answers(real_server, client):
    log = real_server.log()
    assert "serving SmolLM2-135M-Instruct from" in log and "SmolLM2-135M-Instruct.Q4_1.gguf" in log
    auto_dtype = "torch.bfloat16" if cpu_has_fast_bf16() else "torch.float32"  # fp32 where bf16 is emulated
    assert "using the converted checkpoint" in log and auto_dtype in log
    assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL_NAME]
    body = {"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 32, "temperature": 0}
    r = httpx.post(f"{real_server.url}/v1/chat/completions", json=body, timeout=120)  # what the README's curl sends
    assert r.status_code == 200
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call_has_the_right_arguments(client, tool_choice):
    r = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=PARIS, tools=[WEATHER_TOOL],
                                       tool_choice=tool_choice, parallel_tool_calls=False, temperature=0,
                                       max_tokens=48)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_answers_from_a_tool_result(real_server, client):
    """History with the call and its result renders in the prompt format, and the model
    answers from the result; asked again, the prompt comes from the cache. (Flushed first:
    a bf16 prefill over a prefix that other tests cached, in other chunks, rounds
    differently, and greedy answers of a 135M model can flip on that.)"""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
    result = json.dumps({"city": "Paris", "temperature_c": 22, "condition": "sunny"})
    messages = PARIS + [{"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": "call_1", "content": result}]
    assert httpx.post(f"{real_server.url}/flush_cache", timeout=30).status_code == 200
    for attempt in ("prefilled", "cached"):
        r = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, tools=[WEATHER_TOOL],
                                           temperature=0, max_tokens=48)
        text = r.choices[0].message.content
        assert "22" in text and "sunny" in text, (attempt, text)
    assert r.usage.prompt_tokens_details.cached_tokens > 0  # the second time, the prompt was cached


def test_tools_reach_the_prompt_with_auto(client):
    """tool_choice=auto: the tool definitions are in the prompt (the 135M model itself
    prefers to answer in text; see README, "The default model")."""
    plain = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=PARIS, max_tokens=1, temperature=0)
    with_tools = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=PARIS, tools=[WEATHER_TOOL],
                                                max_tokens=1, temperature=0)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 100
