"""Tools inside programs: `gen(name, tools=[...], tool_choice=...)`.

`tool_dicts` turns Python functions (signature + docstring) and OpenAI tool dicts into
OpenAI tool dicts. On a text backend the model writes calls in its own format (the
server's tool parser for its chat template), and `call_plan` says how a call is held
to the tools' schemas:
  * "auto": free text, and any call the model opens is held to its tool's schema
    (a structural tag);
  * "required" / a tool name / {"type": "function", "function": {"name": ...}}: the
    program writes the format's fixed opening itself, a JSON schema holds the call
    object(s), and the program writes the closing (so the output is a call, always);
  * "none": the tools are shown, nothing is constrained.
`parse_calls` reads the calls back as {"id", "name", "arguments": dict}.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from dataclasses import dataclass

from runtime.tool_calls.parsers import ToolParser, call_schema

_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def tool_dicts(tools) -> list[dict]:
    out = [tool_dict(t) for t in tools]
    names = [t["function"]["name"] for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"tool names must be unique, got {names}")
    return out


def tool_dict(tool) -> dict:
    """An OpenAI tool dict from a function (its name, docstring and annotated parameters),
    an OpenAI tool dict, or a bare function definition ({"name", "parameters", ...})."""
    if isinstance(tool, dict):
        fn = tool.get("function", tool) if tool.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"a tool dict needs {{'type': 'function', 'function': {{'name': ...}}}}, got {tool!r}")
        return {"type": "function", "function": fn}
    if not callable(tool):
        raise TypeError(f"a tool is a Python function or an OpenAI tool dict, got {type(tool).__name__}")
    return {"type": "function", "function": _function_definition(tool)}


def _function_definition(func) -> dict:
    from pydantic import create_model

    doc = inspect.getdoc(func) or ""
    summary, arg_docs = _parse_docstring(doc)
    hints = typing.get_type_hints(func)
    fields = {}
    for p in inspect.signature(func).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        fields[p.name] = (hints.get(p.name, typing.Any), ... if p.default is p.empty else p.default)
    schema = create_model(func.__name__, **fields).model_json_schema()
    schema.pop("title", None)
    for name, prop in schema.get("properties", {}).items():
        prop.pop("title", None)
        if name in arg_docs:
            prop["description"] = arg_docs[name]
    out = {"name": func.__name__, "parameters": schema}
    if summary:
        out["description"] = summary
    return out


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the text before an `Args:` section, {argument: its description})."""
    m = re.search(r"^(?:Args|Arguments|Parameters):\s*$", doc, flags=re.M)
    if m is None:
        return doc.strip(), {}
    head, args = doc[:m.start()], doc[m.end():]
    described = {}
    for line in args.splitlines():
        m = _ARG_LINE.match(line)
        if m:
            described[m.group(1)] = m.group(2).strip()
    return head.strip(), described


@dataclass
class CallPlan:
    opening: str  # text the program writes before the model's output
    constraint: dict  # sampling-param constraint
    closing: str  # text the program writes after it
    forced: bool = False  # the output must be a call (required / named)


def call_plan(parser: ToolParser, tools: list[dict], tool_choice, parallel: bool = True) -> CallPlan | None:
    """How the model's output is held to calls (None: unconstrained, tool_choice "none")."""
    if tool_choice in (None, "auto"):
        return CallPlan("", {"structural_tag": json.dumps(parser.structural_tag(tools))}, "")
    if tool_choice == "none":
        return None
    if tool_choice != "required":
        name = tool_choice if isinstance(tool_choice, str) else (tool_choice.get("function") or {}).get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise ValueError(f"tool_choice names {name!r}, which is not one of the tools "
                             f"{[t['function']['name'] for t in tools]}")
        tools, parallel = chosen, False
    opening, shape, closing = parser.forced_format()
    schema = call_schema(tools, parser.arguments_key)
    if shape == "array":
        schema = {"type": "array", "items": schema, "minItems": 1, **({} if parallel else {"maxItems": 1})}
    return CallPlan(opening, {"json_schema": json.dumps(schema)}, closing, forced=True)


def parse_calls(parser: ToolParser, text: str) -> tuple[str | None, list[dict]]:
    """(content outside the calls, [{"id", "name", "arguments": dict}])."""
    content, calls = parser.parse(text)
    return content, [{"id": c.id, "name": c.name, "arguments": json.loads(c.arguments)} for c in calls]


def openai_tool_call(call: dict) -> dict:
    return {"id": call["id"], "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
