"""Tool-call parsers: model output text -> OpenAI tool calls, whole or streamed.

A parser knows one model family's format. Contract (`ToolParser`):
  * `find_start(text)`: index where the tool-call section begins, or None;
  * `hold_back(text)`: how many trailing chars might begin that section (not streamed yet);
  * `scan(text, start)`: the calls from `start`, the last maybe incomplete (PartialCall);
  * `parse(text)`: (content, calls) of a finished output; output that is not a
    well-formed call sequence is all content and no calls;
  * `structural_tag(tools)`: the grammar spec that holds `tool_choice="auto"` calls
    to each tool's parameter schema (free text until a trigger);
  * `forced_format()`: (opening, "object" | "array", closing) of output that must be a
    call in this format: fixed text, one call object or an array of them, fixed text
    (frontend programs write the fixed text and constrain the JSON; `runtime.lang.tools`).
`ToolCallStreamer` turns the growing text into OpenAI stream deltas with any parser.
Registry: `get_parser(name)`; "auto" picks one from the chat template's text.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from runtime.constrained.regex_util import not_starting_with
from runtime.tool_calls.json_scan import PartialCall, scan_call
from runtime.tool_calls.prompt_format import template_renders_tools


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of an object
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or new_call_id()

    def to_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def tool_parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


class ToolParser:
    """A format of JSON call objects, found after a marker (or at the very start of
    the output when `json_at_start`), separated by `separators`."""

    name = "base"
    markers: tuple[str, ...] = ()
    json_at_start = False
    separators = re.compile(r"\s*")
    accept_truncated = False  # keep the complete calls of a cut-off output (forced formats)
    tools_in_prompt = False  # the server, not the chat template, shows the tools (prompt_tools)
    arguments_key = "arguments"  # the call object's key for the arguments

    def find_start(self, text: str) -> int | None:
        found = [i for i in (text.find(m) for m in self.markers) if i != -1]
        best = min(found) if found else None
        if self.json_at_start:
            lead = len(text) - len(text.lstrip())
            if lead < len(text) and text[lead] in "{[" and (best is None or lead < best):
                return lead
        return best

    def hold_back(self, text: str) -> int:
        if self.json_at_start and not text.strip():
            return len(text)  # only whitespace so far: a call may still start here
        n = 0
        for marker in self.markers:
            for k in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:k]):
                    n = max(n, k)
                    break
        return n

    def scan(self, text: str, start: int) -> tuple[list[PartialCall], int]:
        """Calls from `start`; returns them and the index where scanning stopped (at
        text that is neither a separator nor a call object, or at the end)."""
        calls: list[PartialCall] = []
        pos = start
        while True:
            pos = self.separators.match(text, pos).end()
            if pos >= len(text) or text[pos] != "{":
                return calls, pos
            call = scan_call(text, pos)
            calls.append(call)
            if call.end is None or not call.valid:
                return calls, len(text) if call.end is None else pos
            pos = call.end

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        start = self.find_start(text)
        if start is None:
            return text, []
        calls, stop = self.scan(text, start)
        complete = 0
        while complete < len(calls) and calls[complete].end is not None and calls[complete].valid \
                and calls[complete].name is not None:
            complete += 1
        if complete == 0 or (complete < len(calls) and not self.accept_truncated):
            return text, []
        calls = calls[:complete]
        content = (text[:start] + text[stop:]).strip()
        return content or None, [ToolCall(c.name, c.arguments) for c in calls]

    # -- grammar specs -----------------------------------------------------------------
    def structure(self, name: str) -> tuple[str, str]:
        """(begin, end) text around one call's arguments object."""
        return f'{{"name": "{name}", "arguments": ', "}"

    def triggers(self) -> list[str]:
        return list(self.markers)

    def forced_format(self) -> tuple[str, str, str]:
        return "", "object", ""

    def no_call_regex(self) -> str | None:
        """A regex for output that does not open with this format's call trigger
        (tool_choice "none" with tools shown): None when there is no single trigger."""
        triggers = self.triggers()
        return not_starting_with(triggers[0]) if len(triggers) == 1 else None

    def structural_tag(self, tools: list[dict]) -> dict:
        structures = []
        for tool in tools:
            begin, end = self.structure(tool["function"]["name"])
            structures.append({"begin": begin, "schema": tool_parameters(tool), "end": end})
        return {"structures": structures, "triggers": self.triggers()}


class QwenParser(ToolParser):
    """Qwen2.5 / Hermes: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`."""

    name = "qwen"
    markers = ("<tool_call>",)
    separators = re.compile(r"(?:\s|<tool_call>|</tool_call>)*")

    def structure(self, name: str) -> tuple[str, str]:
        return f'<tool_call>\n{{"name": "{name}", "arguments": ', "}\n</tool_call>"

    def forced_format(self) -> tuple[str, str, str]:
        return "<tool_call>\n", "object", "\n</tool_call>"


class Llama3Parser(ToolParser):
    """Llama 3.x JSON calls: `{"name": ..., "parameters": {...}}` at the start of the
    output (optionally after `<|python_tag|>`), several separated by `;`."""

    name = "llama3"
    markers = ("<|python_tag|>",)
    json_at_start = True
    separators = re.compile(r"(?:\s|;|<\|python_tag\|>)*")
    arguments_key = "parameters"

    def structure(self, name: str) -> tuple[str, str]:
        return f'{{"name": "{name}", "parameters": ', "}"

    def triggers(self) -> list[str]:
        return ['{"name":']


class MistralParser(ToolParser):
    """Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`."""

    name = "mistral"
    markers = ("[TOOL_CALLS]",)
    json_at_start = True
    separators = re.compile(r"(?:\s|\[TOOL_CALLS\]|\[|\]|,)*")

    def structure(self, name: str) -> tuple[str, str]:
        return f'[TOOL_CALLS] [{{"name": "{name}", "arguments": ', "}]"

    def forced_format(self) -> tuple[str, str, str]:
        return "[TOOL_CALLS] ", "array", ""


class PromptToolsParser(ToolParser):
    """`<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`, one or more blocks:
    the format `prompt_tools` asks for when the chat template cannot show tools."""

    name = "prompt"
    tools_in_prompt = True
    markers = ("<tool_call>",)
    separators = re.compile(r"(?:\s|<tool_call>|</tool_call>|\[|\]|,)*")

    def structure(self, name: str) -> tuple[str, str]:
        return f'<tool_call>[{{"name": "{name}", "arguments": ', "}]</tool_call>"

    def forced_format(self) -> tuple[str, str, str]:
        return "<tool_call>", "array", "</tool_call>"


class JsonArrayParser(ToolParser):
    """The forced format of `tool_choice="required"`: a JSON array of call objects."""

    name = "json"
    json_at_start = True
    accept_truncated = True  # the grammar guarantees the structure; a length cut keeps whole calls
    separators = re.compile(r"(?:\s|\[|\]|,)*")


class NamedFunctionParser(ToolParser):
    """The forced format of a named `tool_choice`: the whole output is the arguments."""

    json_at_start = True

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name

    def find_start(self, text: str) -> int | None:
        return 0

    def hold_back(self, text: str) -> int:
        return 0

    def scan(self, text: str, start: int) -> tuple[list[PartialCall], int]:
        body = text.lstrip()
        return [PartialCall(self.function_name, body, None)], len(text)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        import json

        try:
            args = json.loads(text)
        except json.JSONDecodeError:
            return text, []
        if not isinstance(args, dict):
            return text, []
        return None, [ToolCall(self.function_name, text.strip())]


PARSERS: dict[str, type[ToolParser]] = {
    "qwen": QwenParser, "qwen25": QwenParser, "hermes": QwenParser,
    "llama3": Llama3Parser, "mistral": MistralParser, "prompt": PromptToolsParser,
}


def get_parser(name: str, template_source: str | None = None) -> ToolParser:
    if name == "auto":
        source = template_source or ""
        if "[TOOL_CALLS]" in source:
            name = "mistral"
        elif "<|python_tag|>" in source or "ipython" in source:
            name = "llama3"
        elif template_renders_tools(source):
            name = "qwen"
        else:
            name = "prompt"  # the template cannot show tools: the server puts them in the system message
    if name not in PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r}; known: {sorted(PARSERS)} or auto")
    return PARSERS[name]()


def call_schema(tools: list[dict], arguments_key: str = "arguments") -> dict:
    """JSON schema of one call object {"name": ..., arguments_key: {...}} to any of `tools`."""
    return {"anyOf": [{"type": "object", "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                                                        arguments_key: tool_parameters(t)},
                       "required": ["name", arguments_key], "additionalProperties": False} for t in tools]}


def required_schema(tools: list[dict], parallel: bool) -> dict:
    """JSON schema of `tool_choice="required"` output: an array of calls."""
    schema: dict = {"type": "array", "minItems": 1, "items": call_schema(tools)}
    if not parallel:
        schema["maxItems"] = 1
    return schema


class ToolCallStreamer:
    """Cumulative output text -> (content delta, tool-call deltas) in OpenAI's stream
    shape: a call's first delta carries its index, id, type, name (and the arguments so
    far); later deltas carry argument fragments for that index. The server sends each
    delta in a chunk of its own."""

    def __init__(self, parser: ToolParser, max_calls: int | None = None) -> None:
        self.parser, self.max_calls = parser, max_calls
        self.content_sent = 0
        self.start: int | None = None
        self.sent: list[list[str]] = []  # per call: [id, arguments sent]

    @property
    def num_calls(self) -> int:
        return len(self.sent)

    def update(self, text: str, final: bool = False) -> tuple[str, list[dict]]:
        content = ""
        if self.start is None:
            self.start = self.parser.find_start(text)
            upto = self.start if self.start is not None else \
                len(text) - (0 if final else self.parser.hold_back(text))
            if upto > self.content_sent:
                content, self.content_sent = text[self.content_sent:upto], upto
        if self.start is None:
            return content, []
        if final:
            return content + self._finish(text), self._final_deltas(text)
        calls, _ = self.parser.scan(text, self.start)
        return content, self._deltas([c for c in calls if c.valid])

    def _allowed(self, index: int) -> bool:
        return self.max_calls is None or index < self.max_calls

    def _deltas(self, calls: list) -> list[dict]:
        """At most one delta per call index (llama-index reads one per chunk): a new call's
        first delta carries its name and the arguments so far."""
        deltas = []
        for i, call in enumerate(calls):
            if call.name is None or not self._allowed(i):
                break
            delta: dict = {"index": i, "function": {}}
            if i == len(self.sent):
                call_id = new_call_id()
                self.sent.append([call_id, ""])
                delta.update(id=call_id, type="function", function={"name": call.name, "arguments": ""})
            sent_args = self.sent[i][1]
            if len(call.arguments) > len(sent_args) and call.arguments.startswith(sent_args):
                delta["function"]["arguments"] = call.arguments[len(sent_args):]
                self.sent[i][1] = call.arguments
            if delta["function"]:
                deltas.append(delta)
        return deltas

    def _finish(self, text: str) -> str:
        """At the end: output that never became a call is content after all."""
        _, calls = self.parser.parse(text)
        if calls or self.sent:
            return ""
        rest, self.content_sent = text[self.content_sent:], len(text)
        return rest

    def _final_deltas(self, text: str) -> list[dict]:
        _, calls = self.parser.parse(text)
        return self._deltas([PartialCall(c.name, c.arguments, 0) for c in calls])
