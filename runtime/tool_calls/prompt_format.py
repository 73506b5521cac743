"""Tools for models whose chat template cannot show them (SmolLM2's has no tool section).

With the `prompt` tool parser (what `auto` picks for a template that never mentions
`tools`), the server renders the conversation in this format (the one SmolLM2-Instruct
was trained on) before the template sees it:
  * the tool definitions (OpenAI `function` objects as a JSON list) go into the system
    message, after its own text, with instructions to answer with
        <tool_call>[{"name": "...", "arguments": {...}}, ...]</tool_call>
  * an assistant message's `tool_calls` become that text in its content;
  * a `tool` message stays a `tool` turn with its content as it is (SmolLM2 answers from
    it; wrapped in `<tool_response>` tags, or as a user turn, it echoes the result instead).
`parsers.PromptToolsParser` reads the calls back; with `tool_choice="auto"` a structural tag holds
each call's arguments to its tool's schema once the model opens `<tool_call>`.
"""

from __future__ import annotations

import json

TOOLS_INSTRUCTIONS = """You can call functions (tools). Based on the question, make one or more function calls \
to get what is needed. If none of the functions fits, say so; if the question lacks a parameter a function \
requires, ask for it.
You have access to the following tools:
<tools>{tools}</tools>
To call functions, answer in this format and with nothing else; make sure each argument has the right type:
<tool_call>[
{{"name": "func_name1", "arguments": {{"argument1": "value1", "argument2": "value2"}}}},
... (more calls as needed)
]</tool_call>"""


def template_renders_tools(template_source: str | None) -> bool:
    return bool(template_source) and "tools" in template_source


def format_calls(calls: list[dict]) -> str:
    """An assistant message's OpenAI-shaped `tool_calls` as the text the model writes."""
    items = []
    for call in calls:
        fn = call["function"]
        args = fn["arguments"] if isinstance(fn["arguments"], str) else json.dumps(fn["arguments"])
        items.append(f'{{"name": {json.dumps(fn["name"])}, "arguments": {args}}}')
    return "<tool_call>[\n" + ",\n".join(items) + "\n]</tool_call>"


def template_input(messages: list[dict], tools: list[dict] | None,
                   tools_in_prompt: bool) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) to render: as they are, or, when the template cannot show tools
    (`ToolParser.tools_in_prompt`), rewritten into this format with no tools left over."""
    if tools_in_prompt:
        return messages_with_tools_in_prompt(messages, tools), None
    return messages, tools


def messages_with_tools_in_prompt(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """`messages` (template dicts) rewritten into the format above; `tools` may be None
    (a history with tool calls and results still needs rewriting)."""
    out = []
    for msg in messages:
        if msg["role"] == "tool":
            out.append({"role": "tool", "content": msg.get("content") or ""})
        elif msg["role"] == "assistant" and msg.get("tool_calls"):
            text = "\n".join(t for t in (msg.get("content"), format_calls(msg["tool_calls"])) if t)
            out.append({"role": "assistant", "content": text})
        else:
            out.append({k: v for k, v in msg.items() if k != "tool_calls"})
    if tools:
        section = TOOLS_INSTRUCTIONS.format(tools=json.dumps([t["function"] for t in tools], ensure_ascii=False))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{section}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out
