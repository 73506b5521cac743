"""Tool-call parsers and the chat template, without a server (fast)."""

from __future__ import annotations

import json
import re

import pytest

from runtime.constrained.regex_util import choices_regex, not_starting_with
from runtime.server.chat_template import ChatTemplate, TemplateError
from runtime.tool_calls.json_scan import scan_value
from runtime.tool_calls.parsers import (
    JsonArrayParser,
    NamedFunctionParser,
    ToolCallStreamer,
    get_parser,
    required_schema,
)

QWEN = ('Checking. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "opts": {"u": ["c", "}"]}}}'
        '\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


def stream_all(parser, text: str, max_calls=None, step: int = 1):
    streamer = ToolCallStreamer(parser, max_calls)
    content, deltas = "", []
    for k in range(step, len(text) + step, step):
        c, d = streamer.update(text[:k])
        assert len({delta["index"] for delta in d}) == len(d), "one delta per call and update (one per chunk)"
        content, deltas = content + c, deltas + d
    c, d = streamer.update(text, final=True)
    calls: dict[int, dict] = {}
    for delta in deltas + d:
        entry = calls.setdefault(delta["index"], {"name": None, "args": "", "id": None})
        if "id" in delta:
            assert entry["id"] is None, "a call's id/name come once, in its first delta"
            entry["id"], entry["name"] = delta["id"], delta["function"]["name"]
        entry["args"] += delta["function"].get("arguments", "")
    return content + c, calls


def test_scan_value():
    assert scan_value('{"a": "}"} tail', 0) == 10
    assert scan_value('{"a": [1, 2', 0) is None
    assert scan_value('"x\\"y" ,', 0) == 6
    assert scan_value("12", 0) is None and scan_value("12,", 0) == 2


def test_qwen_parse_and_stream_agree():
    parser = get_parser("qwen")
    content, calls = parser.parse(QWEN)
    assert content == "Checking."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "opts": {"u": ["c", "}"]}}), ("get_time", {})]
    for step in (1, 3, 7):
        streamed_content, streamed = stream_all(parser, QWEN, step=step)
        assert streamed_content.strip() == "Checking."
        assert [(s["name"], s["args"]) for s in streamed.values()] == [(c.name, c.arguments) for c in calls]
    _, one = stream_all(parser, QWEN, max_calls=1)
    assert list(one) == [0]


def test_no_call_regex_refuses_only_a_call_at_the_start():
    pattern = get_parser("qwen").no_call_regex()
    for text in ("", "<tool", "The weather is sunny.", "<tools are fun", "a\n<tool_call>", "<tool_cal"):
        assert re.fullmatch(pattern, text, re.S), text
    for text in ("<tool_call>", '<tool_call>\n{"name": "f"}'):
        assert not re.fullmatch(pattern, text, re.S), text
    assert re.fullmatch(not_starting_with("[A.]"), "[A,") and not re.fullmatch(not_starting_with("[A.]"), "[A.]x")
    assert re.fullmatch(choices_regex(["a.b", "(c)"]), "(c)") and not re.fullmatch(choices_regex(["a.b"]), "axb")


def test_partial_marker_is_held_back():
    streamer = ToolCallStreamer(get_parser("qwen"))
    assert streamer.update("Hi <tool") == ("Hi ", [])
    assert streamer.update("Hi <tools are fun") == ("<tools are fun", [])


def test_invalid_or_unfinished_calls_are_content():
    parser = get_parser("qwen")
    for text in ('<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>', "<tool_call>{oops}</tool_call>",
                 '<tool_call>\n{"name": "f", "arguments": {"a": 1'):
        assert parser.parse(text) == (text, [])
        content, calls = stream_all(parser, text)
        assert content == text or calls  # streamed text is never lost


def test_llama3_and_mistral():
    llama = get_parser("llama3")
    _, calls = llama.parse('<|python_tag|>{"name": "f", "parameters": {"x": 1}}; {"name": "g", "parameters": {}}')
    assert [(c.name, c.arguments) for c in calls] == [("f", '{"x": 1}'), ("g", "{}")]
    assert llama.parse('Sure: {"name": "f"}')[1] == []
    _, calls = get_parser("mistral").parse('[TOOL_CALLS] [{"name": "f", "arguments": {"x": "]"}}]')
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"x": "]"})]
    _, streamed = stream_all(get_parser("mistral"), '[TOOL_CALLS] [{"name": "f", "arguments": {"x": 2}}]')
    assert streamed[0]["name"] == "f" and json.loads(streamed[0]["args"]) == {"x": 2}


def test_forced_formats():
    arr = '[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}'  # cut off by max_tokens
    assert [c.name for c in JsonArrayParser().parse(arr)[1]] == ["f", "g"]
    assert [c.name for c in JsonArrayParser().parse(arr[:-5])[1]] == ["f"]
    named = NamedFunctionParser("f")
    assert named.parse('{"a": 1}')[1][0].arguments == '{"a": 1}'
    assert named.parse("nope") == ("nope", [])
    _, streamed = stream_all(named, '{"a": 1}')
    assert streamed[0]["name"] == "f" and streamed[0]["args"] == '{"a": 1}'
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    schema = required_schema(tools, parallel=False)
    assert schema["maxItems"] == 1 and schema["items"]["anyOf"][0]["properties"]["name"]["enum"] == ["f"]


def test_structural_tags_match_each_format():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for name, sample in [("qwen", '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'),
                         ("llama3", '{"name": "f", "parameters": {}}'),
                         ("mistral", '[TOOL_CALLS] [{"name": "f", "arguments": {}}]')]:
        parser = get_parser(name)
        tag = parser.structural_tag(tools)
        [s] = tag["structures"]
        assert sample == s["begin"] + "{}" + s["end"]
        assert any(s["begin"].startswith(t) for t in tag["triggers"])
        assert [c.name for c in parser.parse(sample)[1]] == ["f"]


def test_parser_auto_detection():
    assert get_parser("auto", "{% if tools %}{{ '<tool_call>' }}{% endif %}").name == "qwen"
    assert get_parser("auto", "{{ messages[0]['content'] }}").name == "prompt"  # no tool section (SmolLM2)
    assert get_parser("auto", "[TOOL_CALLS]").name == "mistral"
    assert get_parser("auto", "<|python_tag|>").name == "llama3"
    with pytest.raises(ValueError):
        get_parser("nope")


def test_chat_template_sandbox_and_errors(tmp_path):
    t = ChatTemplate("{% for m in messages %}{{ m['role'] }}:{{ m['content'] | tojson }}\n{% endfor %}")
    assert t.render([{"role": "user", "content": "<b>é</b>"}]) == 'user:"<b>é</b>"\n'
    with pytest.raises(TemplateError, match="alternate"):
        ChatTemplate("{{ raise_exception('roles must alternate') }}").render([])
    with pytest.raises(TemplateError):  # the sandbox refuses attribute tricks
        ChatTemplate("{{ messages.__class__.__mro__ }}").render([])
    with pytest.raises(TemplateError):
        ChatTemplate("{% set x = messages.append(1) %}").render([])


PROMPT_FORMAT = ('<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}},\n'
                 '{"name": "get_time", "arguments": {"tz": "CET"}}\n]</tool_call>')


def test_prompt_format_parse_and_stream_agree():
    parser = get_parser("prompt")
    assert parser.tools_in_prompt
    content, calls = parser.parse("Let me check.\n" + PROMPT_FORMAT)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                                  ("get_time", {"tz": "CET"})]
    for step in (1, 4):
        _, streamed = stream_all(parser, PROMPT_FORMAT, step=step)
        assert [(s["name"], s["args"]) for s in streamed.values()] == [(c.name, c.arguments) for c in calls]
    [s] = parser.structural_tag([{"type": "function", "function": {"name": "f"}}])["structures"]
    assert [c.name for c in parser.parse(s["begin"] + "{}" + s["end"])[1]] == ["f"]
    assert parser.parse("<tool_call>[]</tool_call>")[1] == []


def test_messages_with_tools_in_prompt_round_trips_through_the_parser():
    from runtime.tool_calls.prompt_format import messages_with_tools_in_prompt

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "22C"}]
    out = messages_with_tools_in_prompt(messages, [tool])
    assert out[0]["content"].startswith("Be brief.\n\n") and '<tools>[{"name": "get_weather"' in out[0]["content"]
    assert out[2] == {"role": "assistant",
                      "content": '<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n]</tool_call>'}
    assert out[3] == {"role": "tool", "content": "22C"}
    _, [parsed] = get_parser("prompt").parse(out[2]["content"])  # what we show is what we parse
    assert (parsed.name, json.loads(parsed.arguments)) == ("get_weather", {"city": "Paris"})
    assert messages_with_tools_in_prompt(messages[1:2], [tool])[0]["role"] == "system"  # added when absent
    assert messages_with_tools_in_prompt(messages[1:2], None) == messages[1:2]
