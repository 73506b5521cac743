"""Scanning possibly-incomplete JSON text (model output as it streams).

`scan_value(text, pos)` finds where the JSON value starting at `pos` ends, or None if
the text stops inside it. `scan_call(text, pos)` reads one `{"name": ..., "arguments":
...}` object that may still be growing: the name once it is complete, and the raw
arguments text so far. The arguments prefix only ever grows by appending, so what was
streamed stays a prefix of the final arguments text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")
# `{"name": "<name>", "arguments": ` followed by the first character of the value
_CALL_HEAD = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\S)')
ARG_KEYS = ("arguments", "parameters")


def scan_value(text: str, pos: int) -> int | None:
    """End index (exclusive) of the JSON value at text[pos], or None if incomplete.
    Assumes well-formed JSON; garbage is caught later by json.loads."""
    if pos >= len(text):
        return None
    first = text[pos]
    if first == '"':
        return _scan_string(text, pos)
    if first in "{[":
        depth, i = 0, pos
        while i < len(text):
            c = text[i]
            if c == '"':
                end = _scan_string(text, i)
                if end is None:
                    return None
                i = end
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return None
    m = _SCALAR.match(text, pos)
    if m is None or m.end() == len(text):  # a number may still grow
        return None
    return m.end()


def _scan_string(text: str, pos: int) -> int | None:
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    return None


@dataclass
class PartialCall:
    name: str | None  # None until the name is complete (or for name-last objects)
    arguments: str  # raw JSON text of the arguments so far ("" if not started)
    end: int | None  # index after the object's closing brace, None while incomplete
    valid: bool = True  # False: the complete object is not a usable call


def scan_call(text: str, pos: int) -> PartialCall:
    """Read the call object starting at text[pos] == '{'."""
    head = _CALL_HEAD.match(text, pos)
    if head is not None:
        name = json.loads(f'"{head.group(1)}"')
        args_start = head.end()
        args_end = scan_value(text, args_start)
        if args_end is None:
            return PartialCall(name, text[args_start:], None)
        arguments = text[args_start:args_end]
        obj_end = scan_value(text, pos)
        if obj_end is None:
            return PartialCall(name, arguments, None)
        ok = _load_call(text[pos:obj_end]) is not None and _is_object(arguments)
        return PartialCall(name, arguments, obj_end, ok)
    obj_end = scan_value(text, pos)
    if obj_end is None:
        return PartialCall(None, "", None)
    call = _load_call(text[pos:obj_end])
    if call is None:
        return PartialCall(None, "", obj_end, valid=False)
    return PartialCall(call[0], call[1], obj_end)


def _is_object(raw: str) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except json.JSONDecodeError:
        return False


def _load_call(raw: str) -> tuple[str, str] | None:
    """(name, arguments JSON text) from a complete call object, or None."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = next((obj[k] for k in ARG_KEYS if k in obj), {})
    if isinstance(args, str):  # some models send the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False)
