"""Tool calls over HTTP with scripted model outputs (no engine process): parsing,
streaming deltas, the constraints sent to the engine, and LangChain's view of them."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from runtime.server.app import create_app
from tests.e2e.scripted_engine import ScriptedEngine

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
USER = [{"role": "user", "content": "Weather in Paris and the time?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TWO_CALLS = CALL + '\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


@pytest.fixture(scope="module")
def engine(tokenizer, tiny_model_path):
    return ScriptedEngine(tokenizer, str(tiny_model_path))


@pytest.fixture(scope="module")
def http(engine):
    with TestClient(create_app(engine)) as client:
        yield client


def chat(http, engine, output: str, **body) -> dict:
    engine.outputs = [output]
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 64, **body})
    assert r.status_code == 200, r.text
    return r.json()


def stream_chat(http, engine, output: str, **body) -> list[dict]:
    engine.outputs = [output]
    with http.stream("POST", "/v1/chat/completions",
                     json={"messages": USER, "max_tokens": 64, "stream": True, **body}) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_single_call(http, engine):
    choice = chat(http, engine, CALL, tools=[WEATHER])["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_text_then_parallel_calls(http, engine):
    choice = chat(http, engine, "Let me check. " + TWO_CALLS, tools=[WEATHER, TIME])["choices"][0]
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert len({c["id"] for c in calls}) == 2
    assert choice["message"]["content"] == "Let me check."
    one = chat(http, engine, TWO_CALLS, tools=[WEATHER, TIME], parallel_tool_calls=False)["choices"][0]
    assert len(one["message"]["tool_calls"]) == 1


def test_invalid_call_is_content(http, engine):
    bad = "<tool_call>\n{not json}\n</tool_call>"
    choice = chat(http, engine, bad, tools=[WEATHER])["choices"][0]
    assert choice["message"]["content"] == bad and "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    assert chat(http, engine, CALL)["choices"][0]["message"]["content"] == CALL  # no tools: no parsing


def test_streamed_calls(http, engine):
    chunks = stream_chat(http, engine, "Sure. " + TWO_CALLS, tools=[WEATHER, TIME])
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content.strip() == "Sure."
    calls: dict[int, dict] = {}
    for d in deltas:
        for tc in d.get("tool_calls", []):
            if tc["index"] not in calls:  # first delta of a call: id, type, name
                assert tc["id"].startswith("call_") and tc["type"] == "function" and tc["function"]["name"]
                calls[tc["index"]] = {"id": tc["id"], "name": tc["function"]["name"], "args": ""}
            else:
                assert "id" not in tc and "name" not in tc["function"]
            calls[tc["index"]]["args"] += tc["function"].get("arguments", "")
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["args"]) == {"city": "Paris"} and json.loads(calls[1]["args"]) == {}
    arg_deltas = [tc for d in deltas for tc in d.get("tool_calls", []) if tc["index"] == 0 and "id" not in tc]
    assert len(arg_deltas) > 1  # arguments arrive in fragments
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    one = stream_chat(http, engine, TWO_CALLS, tools=[WEATHER, TIME], parallel_tool_calls=False)
    indices = {tc["index"] for c in one if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])}
    assert indices == {0}


def test_constraints_sent_to_engine(http, engine):
    chat(http, engine, "x", tools=[WEATHER])
    tag = engine.requests[-1]["sampling_params"]["structural_tag"]
    assert tag["triggers"] == ["<tool_call>"]
    [structure] = tag["structures"]
    assert structure["schema"] == WEATHER["function"]["parameters"]
    assert CALL.startswith(structure["begin"]) and CALL.endswith(structure["end"])
    chat(http, engine, "x", tools=[WEATHER], tool_choice="required")
    schema = json.loads(engine.requests[-1]["sampling_params"]["json_schema"])
    assert schema["type"] == "array" and schema["minItems"] == 1
    chat(http, engine, "x", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert json.loads(engine.requests[-1]["sampling_params"]["json_schema"]) == WEATHER["function"]["parameters"]
    chat(http, engine, "x", response_format={"type": "json_object"})
    assert json.loads(engine.requests[-1]["sampling_params"]["json_schema"]) == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": schema}}
    chat(http, engine, "x", response_format=fmt)
    assert json.loads(engine.requests[-1]["sampling_params"]["json_schema"])["properties"] == {"a": {"type": "integer"}}
    chat(http, engine, "x", seed=5, stop="END", cache_salt="s1")
    sp = engine.requests[-1]["sampling_params"]
    assert sp["sampling_seed"] == 5 and sp["stop"] == ["END"] and engine.requests[-1]["cache_salt"] == "s1"


def test_forced_calls_parse(http, engine):
    named = {"type": "function", "function": {"name": "get_weather"}}
    choice = chat(http, engine, '{"city": "Rome"}', tools=[WEATHER], tool_choice=named)["choices"][0]
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    chunks = stream_chat(http, engine, '{"city": "Rome"}', tools=[WEATHER], tool_choice=named)
    first = next(tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", []))
    assert first["function"]["name"] == "get_weather" and first["id"]
    required = '[{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {}}]'
    calls = chat(http, engine, required, tools=[WEATHER, TIME], tool_choice="required")["choices"][0]["message"]
    assert [c["function"]["name"] for c in calls["tool_calls"]] == ["get_weather", "get_time"]


def test_tool_messages_rendered(http, engine, tokenizer):
    msgs = USER + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    engine.outputs = ["It is sunny."]
    assert http.post("/v1/chat/completions", json={"messages": msgs, "tools": [WEATHER]}).status_code == 200
    prompt = tokenizer.decode(engine.requests[-1]["input_ids"])
    assert "<tool_response>\nsunny\n</tool_response>" in prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert '"name": "get_weather"' in prompt.split("<tools>\n")[1]  # the tool list


def test_langchain_parses_tool_calls(engine):
    import langchain_openai
    with TestClient(create_app(engine)) as client:
        model = langchain_openai.ChatOpenAI(model="radixflow-demo", base_url="http://testserver/v1",
                                            api_key="unused", http_client=client, max_retries=0)
        bound = model.bind_tools([WEATHER])
        engine.outputs = [CALL]
        msg = bound.invoke("Weather in Paris?")
        assert msg.tool_calls == [{"name": "get_weather", "args": {"city": "Paris"}, "id": msg.tool_calls[0]["id"],
                                   "type": "tool_call"}]
        engine.outputs = [CALL]
        merged = None
        for chunk in bound.stream("Weather in Paris?"):
            merged = chunk if merged is None else merged + chunk
        assert merged.tool_calls[0]["name"] == "get_weather" and merged.tool_calls[0]["args"] == {"city": "Paris"}


def test_chat_template_override(engine, tokenizer, tmp_path):
    from runtime.server.state import ServerSettings

    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    engine.outputs = ["ok"]
    with TestClient(create_app(engine, ServerSettings(chat_template=str(template)))) as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                       "chat_template_kwargs": {"add_generation_prompt": False}})
        assert r.status_code == 200
        assert tokenizer.decode(engine.requests[-1]["input_ids"]) == "[user] hi\n"
