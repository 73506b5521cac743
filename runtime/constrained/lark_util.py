"""Rewrite Lark string literals that spell an added token (llguidance only).

llguidance represents added tokens (Qwen's `<tool_call>`, ...) as special tokens, and
for a grammar literal like "<tool_call>\\n{" its mask offers only the special token,
which the literal then refuses to consume: a dead end. Naming the token explicitly
fixes it: the literal becomes ("<tool_call>" | <[151657]>) "\\n{", so the model may
write the token (what a tool-calling model does) or the same text piecewise.

Only literals in rules (lowercase names) are rewritten: terminals cannot contain
special tokens. Comments (`// ...`) and regexes (`/.../`) are copied verbatim.
"""

from __future__ import annotations

import json
import re

_RULE_DEF = re.compile(r"\s*\??([A-Za-z_][A-Za-z0-9_]*)(\.\d+)?(\[[^\]]*\])?\s*:")


def name_added_tokens(lark: str, tokens: dict[str, int]) -> str:
    """`tokens`: added-token text -> id (only those worth naming)."""
    if not tokens or not any(t in lark for t in tokens):
        return lark
    out: list[str] = []
    i, n = 0, len(lark)
    in_terminal = False
    at_line_start = True
    while i < n:
        if at_line_start:
            m = _RULE_DEF.match(lark, i)
            if m:
                in_terminal = m.group(1)[0].isupper()
            at_line_start = False
        c = lark[i]
        if c == "\n":
            at_line_start = True
            out.append(c)
            i += 1
        elif lark.startswith("//", i):  # comment to end of line
            j = lark.find("\n", i)
            j = n if j < 0 else j
            out.append(lark[i:j])
            i = j
        elif c in "/\"":  # a regex or a string literal, with backslash escapes
            j = i + 1
            while j < n and lark[j] != c:
                j += 2 if lark[j] == "\\" else 1
            j += 1
            token = lark[i:j]
            out.append(token if c == "/" or in_terminal else _split_literal(token, tokens))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def literal(text: str, tokens: dict[str, int]) -> str:
    """A Lark expression matching `text`, naming the added tokens it spells."""
    return _split_literal(json.dumps(text, ensure_ascii=False), tokens) if text else '""'


def _split_literal(literal: str, tokens: dict[str, int]) -> str:
    try:
        text = json.loads(literal)
    except json.JSONDecodeError:
        return literal
    if not isinstance(text, str) or not any(t in text for t in tokens):
        return literal
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
    parts, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            parts.append(json.dumps(text[pos: m.start()], ensure_ascii=False))
        parts.append(f"({json.dumps(m.group(), ensure_ascii=False)} | <[{tokens[m.group()]}]>)")
        pos = m.end()
    if pos < len(text):
        parts.append(json.dumps(text[pos:], ensure_ascii=False))
    return "(" + " ".join(parts) + ")"
