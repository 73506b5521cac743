"""Structured output through the HTTP API, enforced by grammar-constrained decoding:
response_format, forced tool calls, regex. Random weights write gibberish, so only a
grammar makes these outputs valid; schemas are kept small (enums) so outputs are short."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel

from tests.e2e.harness import MODEL, require_grammar

pytestmark = pytest.mark.requires_grammar

USER = [{"role": "user", "content": "What is the weather?"}]
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
        "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": CITY}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {}, "additionalProperties": False}}}


@pytest.fixture(autouse=True)
def _grammar():
    require_grammar()


def test_json_schema_response_format(client):
    import jsonschema
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    for seed in range(2):
        r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=40, seed=seed, response_format=fmt)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_json_object_response_format(client):
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=30, temperature=0,
                                       response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_regex_extra(client):
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, extra_body={"regex": "(yes|no)"})
    assert r.choices[0].message.content in ("yes", "no")


def test_invalid_regex_is_400(http):
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3, "regex": "("})
    assert r.status_code == 400 and "grammar" in r.json()["error"]["message"]


def _check_calls(calls, allowed=("get_weather", "get_time")):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in allowed
        args = json.loads(call.function.arguments)
        if call.function.name == "get_weather":
            assert args["city"] in ("Paris", "Rome")
        else:
            assert args == {}


def test_tool_choice_named(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=30, tools=[WEATHER, TIME],
                                       tool_choice=named)
    assert r.choices[0].finish_reason == "tool_calls"
    _check_calls(r.choices[0].message.tool_calls, allowed=("get_weather",))
    assert len(r.choices[0].message.tool_calls) == 1


def test_tool_choice_required(client):
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=30, tools=[WEATHER, TIME],
                                       tool_choice="required")
    assert r.choices[0].finish_reason == "tool_calls"
    _check_calls(r.choices[0].message.tool_calls)
    one = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=30, tools=[WEATHER, TIME],
                                         tool_choice="required", parallel_tool_calls=False)
    assert len(one.choices[0].message.tool_calls) == 1


def test_a_forced_tool_call_sets_response_format_aside(client):
    """DSPy's JSONAdapter sends both: the reply is calls, so the content format has nothing to shape."""
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": CITY}}
    for tool_choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=30, tools=[WEATHER, TIME],
                                           tool_choice=tool_choice, parallel_tool_calls=False, response_format=fmt)
        assert r.choices[0].finish_reason == "tool_calls"
        _check_calls(r.choices[0].message.tool_calls)
    bad = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}}
    with pytest.raises(openai.BadRequestError, match="response_format"):  # still checked
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, tools=[WEATHER],
                                       tool_choice="required", response_format=bad)


def test_tool_choice_required_streamed(client):
    stream = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=40, tools=[WEATHER],
                                            tool_choice="required", parallel_tool_calls=False, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for tc in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "args": ""})
            entry["args"] += tc.function.arguments or ""
    assert finish == "tool_calls" and calls
    for entry in calls.values():
        assert entry["id"] and entry["name"] == "get_weather"
        assert json.loads(entry["args"])["city"] in ("Paris", "Rome")


def test_tool_choice_auto_is_valid_when_called(client):
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, tools=[WEATHER], tool_choice="auto")
    if r.choices[0].message.tool_calls:  # random weights rarely call; when they do, it must be valid
        _check_calls(r.choices[0].message.tool_calls)


def test_langchain_forced_tool_and_structured_output(server):
    import langchain_openai
    from pydantic import BaseModel

    model = langchain_openai.ChatOpenAI(model=MODEL, base_url=f"{server.url}/v1", api_key="unused", max_tokens=60,
                                        max_retries=0, timeout=120)
    msg = model.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Rome?")
    assert msg.tool_calls[0]["name"] == "get_weather" and msg.tool_calls[0]["args"]["city"] in ("Paris", "Rome")

    class Verdict(BaseModel):
        answer: Literal["yes", "no"]
        confidence: Literal[1, 2, 3]

    verdict = model.with_structured_output(Verdict, method="json_schema", strict=True).invoke("Is it sunny?")
    assert verdict.answer in ("yes", "no") and verdict.confidence in (1, 2, 3)


def test_openai_parse_returns_a_pydantic_object(client):

    from pydantic import BaseModel

    class Verdict(BaseModel):
        answer: Literal["yes", "no"]
        confidence: Literal[1, 2, 3]

    r = client.chat.completions.parse(model=MODEL, messages=USER, max_tokens=40, response_format=Verdict)
    assert isinstance(r.choices[0].message.parsed, Verdict)


def test_langchain_structured_output_function_calling(server):
    import langchain_openai
    from pydantic import BaseModel

    class City(BaseModel):
        city: Literal["Paris", "Rome"]

    model = langchain_openai.ChatOpenAI(model=MODEL, base_url=f"{server.url}/v1", api_key="unused", max_tokens=40,
                                        max_retries=0, timeout=120)
    out = model.with_structured_output(City, method="function_calling").invoke("Where?")
    assert out.city in ("Paris", "Rome")



class WeatherArgs(BaseModel):
    city: Literal["Paris", "Rome"]


def get_weather(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"


def test_llamaindex_tool_call(server):
    from llama_index.core.tools import FunctionTool
    from llama_index.llms import openai_like

    llm = openai_like.OpenAILike(model=MODEL, api_base=f"{server.url}/v1", api_key="unused", is_chat_model=True,
                                 is_function_calling_model=True, max_tokens=60, context_window=2048, max_retries=0)
    tool = FunctionTool.from_defaults(fn=get_weather, fn_schema=WeatherArgs)
    response = llm.chat_with_tools([tool], user_msg="Weather in Rome?", tool_required=True)
    calls = llm.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    assert calls[0].tool_name == "get_weather" and calls[0].tool_kwargs["city"] in ("Paris", "Rome")
    assert tool.call(**calls[0].tool_kwargs).content.startswith("sunny in ")
