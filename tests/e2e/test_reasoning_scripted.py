"""`--reasoning-parser think` over HTTP with scripted outputs (a random-weight model never
closes its reasoning): the reasoning in `reasoning_content`, the answer in `content` (also
streamed), tool calls parsed from the answer, and constraints sent to hold after `</think>`."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from runtime.server.app import create_app
from runtime.server.state import ServerSettings
from tests.e2e.scripted_engine import ScriptedEngine

# Qwen3's shape: the model opens <think> itself; enable_thinking=false closes it in the prompt
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n"
            "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
USER = [{"role": "user", "content": "Alice is 30. Extract the person."}]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
THOUGHT = "<think>\nThe user wants a JSON object.\n</think>\n\n"
ANSWER = '{"name": "Alice", "age": 30}'


@pytest.fixture(scope="module")
def engine(tokenizer, tiny_model_path):
    return ScriptedEngine(tokenizer, str(tiny_model_path))


def client_for(engine, tmp_path_factory, **settings):
    template = tmp_path_factory.mktemp("template") / "qwen3-like.jinja"
    template.write_text(TEMPLATE)
    return TestClient(create_app(engine, ServerSettings(chat_template=str(template), tool_call_parser="hermes",
                                                        **settings)))


@pytest.fixture(scope="module")
def http(engine, tmp_path_factory):
    with client_for(engine, tmp_path_factory, reasoning_parser="think") as client:
        yield client


def chat(http, engine, output: str, **body) -> dict:
    engine.outputs = [output]
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 64, **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_structured_output_after_the_reasoning(http, engine):
    choice = chat(http, engine, THOUGHT + ANSWER, response_format=FORMAT)
    assert choice["message"]["reasoning_content"] == "The user wants a JSON object."
    assert json.loads(choice["message"]["content"]) == {"name": "Alice", "age": 30}
    sp = engine.requests[-1]["sampling_params"]
    assert json.loads(sp["json_schema"]) == PERSON and sp["grammar_reasoning"] is True


def test_a_prompt_that_closed_the_reasoning_is_plain(http, engine):
    choice = chat(http, engine, ANSWER, response_format=FORMAT, chat_template_kwargs={"enable_thinking": False})
    assert choice["message"]["content"] == ANSWER and "reasoning_content" not in choice["message"]
    assert "grammar_reasoning" not in engine.requests[-1]["sampling_params"]


def test_tool_calls_parse_from_the_answer(http, engine):
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    choice = chat(http, engine, "<think>I need the weather.</think>\n" + call, tools=[WEATHER])
    assert choice["message"]["reasoning_content"] == "I need the weather."
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert engine.requests[-1]["sampling_params"]["grammar_reasoning"] is True  # the call's structural tag


def test_streamed_reasoning_then_answer(http, engine):
    engine.outputs = [THOUGHT + ANSWER]
    with http.stream("POST", "/v1/chat/completions", json={"messages": USER, "max_tokens": 64, "stream": True,
                                                           "response_format": FORMAT}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning == "The user wants a JSON object." and content == ANSWER
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first_content:])


def test_separate_reasoning_false_keeps_it_in_content(http, engine):
    choice = chat(http, engine, THOUGHT + ANSWER, response_format=FORMAT, separate_reasoning=False)
    assert choice["message"]["content"] == THOUGHT + ANSWER and "reasoning_content" not in choice["message"]
    assert engine.requests[-1]["sampling_params"]["grammar_reasoning"] is True


def test_without_the_parser_the_output_is_content(engine, tmp_path_factory):
    with client_for(engine, tmp_path_factory) as client:
        choice = chat(client, engine, THOUGHT + ANSWER)
    assert choice["message"]["content"] == THOUGHT + ANSWER and "reasoning_content" not in choice["message"]
