"""Tools in frontend programs without a model: tool dicts from functions, the call
formats each parser forces (they parse back), and a program's tool turn on the Qwen
template through a scripted backend (tools shown in the system message, the call turn
rendered as the template renders it, tool results linked to their calls)."""

from __future__ import annotations

import json

import jsonschema
import pytest

import runtime as rt
from runtime.chat_roles import read_chat_roles
from runtime.lang.backends.base import Backend
from runtime.lang.backends.openai_backend import OpenAI
from runtime.lang.tools import call_plan, parse_calls, tool_dict, tool_dicts
from runtime.tool_calls.parsers import get_parser


def get_weather(city: str, days: int = 1) -> str:
    """Get the weather forecast for a city.

    Args:
        city: The city name
        days (int): How many days ahead
    """
    return f"{city}: sunny for {days} days"


WEATHER = tool_dict(get_weather)


def test_tool_dict_from_a_function():
    fn = WEATHER["function"]
    assert fn["name"] == "get_weather" and fn["description"] == "Get the weather forecast for a city."
    params = fn["parameters"]
    assert params["required"] == ["city"]
    assert params["properties"]["city"] == {"type": "string", "description": "The city name"}
    assert params["properties"]["days"] == {"type": "integer", "default": 1, "description": "How many days ahead"}
    assert tool_dict({"name": "f", "parameters": {"type": "object"}}) == \
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(ValueError, match="needs"):
        tool_dict({"type": "function", "function": {}})
    with pytest.raises(ValueError, match="unique"):
        tool_dicts([get_weather, WEATHER])
    with pytest.raises(ValueError, match="needs tools"):
        rt.gen("x", tool_choice="required")


@pytest.mark.parametrize("parser_name", ["qwen", "prompt", "llama3", "mistral"])
def test_forced_call_formats_parse_back(parser_name):
    parser = get_parser(parser_name)
    plan = call_plan(parser, [WEATHER], "required")
    assert plan.forced and set(plan.constraint) == {"json_schema"}
    schema = json.loads(plan.constraint["json_schema"])
    call = {"name": "get_weather", parser.arguments_key: {"city": "Paris", "days": 2}}
    body = [call] if schema.get("type") == "array" else call
    jsonschema.validate(body, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{**call, "name": "nope"}] if isinstance(body, list) else {**call, "name": "nope"}, schema)
    content, [parsed] = parse_calls(parser, plan.opening + json.dumps(body) + plan.closing)
    assert content is None and parsed["name"] == "get_weather" and parsed["arguments"] == {"city": "Paris", "days": 2}
    auto = call_plan(parser, [WEATHER], "auto")
    assert not auto.forced and "structural_tag" in auto.constraint
    assert call_plan(parser, [WEATHER], "none") is None
    named = call_plan(parser, [WEATHER], {"type": "function", "function": {"name": "get_weather"}})
    assert named.forced
    with pytest.raises(ValueError, match="not one of the tools"):
        call_plan(parser, [WEATHER], "get_time")


class ScriptedBackend(Backend):
    """The Qwen demo tokenizer's chat template; `generate` answers from a script and
    records the prompts it saw."""

    def __init__(self, tokenizer, replies: list[str]) -> None:
        self.tok, self.replies, self.prompts, self.sampling = tokenizer, list(replies), [], []

    def chat_roles(self):
        return read_chat_roles(lambda m, g: self.tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g))

    def render_chat(self, messages, tools):
        return self.tok.apply_chat_template(messages, tools=tools, tokenize=False)

    def tool_parser(self):
        return get_parser("auto", self.tok.chat_template)

    def generate(self, prompt, sampling_params, options):
        self.prompts.append(prompt)
        self.sampling.append(sampling_params)
        return [(self.replies.pop(0), {"prompt_tokens": 1, "completion_tokens": 1, "cached_tokens": 0})]

    def generate_stream(self, prompt, sampling_params, options):
        raise NotImplementedError

    def tokenize(self, texts):
        return [self.tok.encode(t, add_special_tokens=False) for t in texts]

    def prompt_logprobs(self, input_ids, start):
        raise NotImplementedError


def test_a_tool_turn_on_the_qwen_template(tokenizer):
    # the model's output after the program wrote "<tool_call>\n": compact JSON (the grammar's)
    backend = ScriptedBackend(tokenizer, ['{"name":"get_weather","arguments":{"city":"Paris"}}', "Sunny."])

    @rt.function
    def agent(s):
        s += rt.system("You are helpful.")
        s += rt.user("Weather in Paris?")
        s += rt.assistant(rt.gen("calls", tools=[get_weather], tool_choice="required", temperature=0))
        for call in s["calls"]:
            s += rt.tool(get_weather(**call["arguments"]))
        s += rt.assistant(rt.gen("answer", temperature=0))

    state = agent.run(backend=backend)
    [call] = state["calls"]
    assert call["name"] == "get_weather" and call["arguments"] == {"city": "Paris"}
    assert backend.prompts[0].endswith("<|im_start|>assistant\n<tool_call>\n")  # the program opened the call
    assert json.loads(backend.sampling[0]["json_schema"])["anyOf"][0]["properties"]["name"]["enum"] == ["get_weather"]
    messages = state.messages()
    assert messages[2]["tool_calls"][0]["id"] == call["id"] == messages[3]["tool_call_id"]
    # the whole prompt is what the template renders for these messages and tools
    expected = tokenizer.apply_chat_template(messages[:4], tools=[WEATHER], tokenize=False,
                                             add_generation_prompt=True)
    assert backend.prompts[1] == expected
    assert state.text() == tokenizer.apply_chat_template(messages, tools=[WEATHER], tokenize=False)


def test_tools_need_a_chat_program(tokenizer):
    @rt.function
    def raw(s):
        s += "Weather in Paris? " + rt.gen("calls", tools=[get_weather])

    with pytest.raises(ValueError, match="needs a chat program"):
        raw.run(backend=ScriptedBackend(tokenizer, ["x"]))


def test_openai_backend_request_mapping():
    backend = OpenAI(model="m", base_url="http://127.0.0.1:9/v1", api_key="k")  # no request is sent
    sampling, options = rt.lang.ir.GenParams(max_tokens=5, temperature=0.0, top_k=3, stop_regex="x+",
                                             json_schema={"type": "object"}, top_logprobs_num=2).to_engine()
    body = backend._request([{"role": "user", "content": "hi"}], sampling, options)
    assert body["max_tokens"] == 5 and body["temperature"] == 0.0
    assert body["extra_body"] == {"top_k": 3, "stop_regex": "x+"}
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    backend.shutdown()

    @rt.function
    def loose_text(s):
        s += "not in a role"

    with pytest.raises(ValueError, match="inside system/user/assistant"):
        loose_text.run(backend=backend)
