"""Structural tags: free text, with JSON segments that a trigger string switches on.

Input (SGLang / xgrammar legacy style), as a dict or its JSON text:
    {"structures": [{"begin": "<tool_call>", "schema": {...}, "end": "</tool_call>"}, ...],
     "triggers": ["<tool_call>"]}
Meaning: any text until a trigger appears; a trigger must continue as the `begin` of
one of the structures that start with it, then JSON matching that structure's schema,
then its `end`; then free text again (more tags may follow). Every `begin` must start
with one of the triggers, and every trigger must begin at least one structure.

`parse_structural_tag` validates and returns the normalized dict (schemas parsed).
"""

from __future__ import annotations

import json
from typing import Any

from runtime.constrained.base import GrammarError


def parse_structural_tag(tag: str | dict) -> dict[str, Any]:
    if isinstance(tag, str):
        try:
            tag = json.loads(tag)
        except json.JSONDecodeError as e:
            raise GrammarError(f"structural_tag is not valid JSON: {e}") from None
    if not isinstance(tag, dict):
        raise GrammarError("structural_tag must be a JSON object with 'structures' and 'triggers'")
    unknown = sorted(set(tag) - {"structures", "triggers", "type"})
    if unknown:
        raise GrammarError(f"structural_tag has unknown fields {unknown}; expected 'structures' and 'triggers'")
    structures, triggers = tag.get("structures"), tag.get("triggers")
    if not isinstance(structures, list) or not structures:
        raise GrammarError("structural_tag.structures must be a non-empty list")
    if (not isinstance(triggers, list) or not triggers
            or not all(isinstance(t, str) and t for t in triggers)):
        raise GrammarError("structural_tag.triggers must be a non-empty list of non-empty strings")
    out = []
    for i, s in enumerate(structures):
        if not isinstance(s, dict):
            raise GrammarError(f"structural_tag.structures[{i}] must be an object")
        begin, end, schema = s.get("begin"), s.get("end"), s.get("schema", s.get("parameters"))
        if not isinstance(begin, str) or not begin or not isinstance(end, str):
            raise GrammarError(f"structural_tag.structures[{i}] needs a non-empty string 'begin' and a string 'end'")
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"structural_tag.structures[{i}].schema is not valid JSON: {e}") from None
        if not isinstance(schema, (dict, bool)):
            raise GrammarError(f"structural_tag.structures[{i}].schema must be a JSON schema object")
        if not any(begin.startswith(t) for t in triggers):
            raise GrammarError(f"structural_tag.structures[{i}].begin {begin!r} starts with none of the triggers")
        out.append({"begin": begin, "schema": schema, "end": end})
    for t in triggers:
        if not any(s["begin"].startswith(t) for s in out):
            raise GrammarError(f"structural_tag trigger {t!r} begins no structure")
    return {"structures": out, "triggers": list(triggers)}


def trigger_of(begin: str, triggers: list[str]) -> str:
    """The longest trigger that `begin` starts with."""
    return max((t for t in triggers if begin.startswith(t)), key=len)

