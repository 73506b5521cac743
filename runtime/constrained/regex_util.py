"""Regex text helpers shared by the backends.

* `escape_literal` escapes exactly the regex metacharacters (Python's `re.escape`
  also escapes spaces and other characters that some regex engines reject).
* `choices_regex` matches exactly one of some strings; `not_starting_with` every string
  that does not open with a prefix (no look-ahead: the grammar engines have none).
* `ascii_classes` rewrites `\\d`, `\\w`, `\\s` (and `\\D`, `\\W`, `\\S` outside
  brackets) to ASCII classes. The engines disagree: xgrammar's are ASCII, while
  llguidance's and outlines-core's (Rust regex) are Unicode, so `\\d{4}` could
  produce "１２３４". Users writing `\\d` mean 0-9; we make every backend agree.
"""

from __future__ import annotations

_META = set("\\.^$|?*+()[]{}")
_INSIDE = {"d": "0-9", "w": "0-9A-Za-z_", "s": " \\t\\n\\r\\f\\v"}
_OUTSIDE = {"d": "[0-9]", "w": "[0-9A-Za-z_]", "s": "[ \\t\\n\\r\\f\\v]",
            "D": "[^0-9]", "W": "[^0-9A-Za-z_]", "S": "[^ \\t\\n\\r\\f\\v]"}


def escape_literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in _META:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        else:
            out.append(ch)
    return "".join(out)


def choices_regex(choices: list[str]) -> str:
    return "(" + "|".join(escape_literal(choice) for choice in choices) + ")"


def not_starting_with(prefix: str) -> str:
    """A proper prefix of `prefix`, or its first i characters then another character."""
    heads = [escape_literal(prefix[:i]) for i in range(len(prefix))]
    diverging = [f"{head}[^{escape_literal(prefix[i])}](?s:.)*" for i, head in enumerate(heads)]
    return "(" + "|".join(["", *heads[1:], *diverging]) + ")"


def ascii_classes(regex: str) -> str:
    out = []
    in_class = False
    i = 0
    while i < len(regex):
        ch = regex[i]
        if ch == "\\" and i + 1 < len(regex):
            nxt = regex[i + 1]
            if in_class and nxt in _INSIDE:
                out.append(_INSIDE[nxt])
            elif not in_class and nxt in _OUTSIDE:
                out.append(_OUTSIDE[nxt])
            else:
                out.append(regex[i: i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
            out.append(ch)
            # a ']' right after '[' or '[^' is a literal member, not the end
            j = i + 1
            if j < len(regex) and regex[j] == "^":
                out.append("^")
                j += 1
            if j < len(regex) and regex[j] == "]":
                out.append("\\]")
                j += 1
            i = j
            continue
        if ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    return "".join(out)
