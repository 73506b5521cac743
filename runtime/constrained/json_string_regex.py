"""A string `pattern` as a regex over the string's JSON text (what goes between the quotes).

outlines-core pastes a schema's `pattern` between two quotes as it is, so its classes
can produce characters JSON must escape: `[^:\\s]+` could emit a raw `"`, end the string
early and smuggle in more JSON (maskbench Github_easy o58442), or a raw control
character, which is not JSON at all. `json_string_regex(pattern)` matches the JSON
encodings (as `json.dumps` writes them) of strings the pattern matches:
  * a character JSON must escape is matched as its escape: `"` -> `\\"`, `\\` -> `\\\\`,
    newline -> `\\n`, U+0001 -> `\\u0001`;
  * every class (`[...]`, `.`, `\\d \\w \\s` and their negations, ASCII as in ECMA 262)
    becomes a set of code points, written as a class of the characters that may stay
    raw plus the escapes of `"` and `\\`; a class's control characters are left out
    (it narrows `[^a]` and keeps the automaton small: 32 escapes per class otherwise);
  * JSON Schema patterns search: an alternative without `^` at its start (`$` at its
    end) may be preceded (followed) by any characters, so `^2` admits "2024-02-29";
    anchors anywhere else, backreferences, lookaround and inline flags are GrammarErrors.
The pattern is parsed by Python's regex parser (`re._parser`), which reads the syntax
JSON schemas use as ECMA 262 does; the output is plain syntax for Rust's regex crate.
"""

from __future__ import annotations

import json
import re
import re._constants as sre
import re._parser as sre_parse

from runtime.constrained.base import GrammarError
from runtime.constrained.regex_util import escape_literal

MAX_CODE_POINT = 0x10FFFF
Ranges = list[tuple[int, int]]  # sorted, disjoint, inclusive code point ranges

_SURROGATES: Ranges = [(0xD800, 0xDFFF)]  # never in UTF-8 text
_MUST_ESCAPE: Ranges = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]  # control chars, ", \
_QUOTE_AND_BACKSLASH: Ranges = [(0x22, 0x22), (0x5C, 0x5C)]
_CATEGORIES: dict[object, Ranges] = {
    sre.CATEGORY_DIGIT: [(0x30, 0x39)],
    sre.CATEGORY_WORD: [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    sre.CATEGORY_SPACE: [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                         (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
                         (0xFEFF, 0xFEFF)],
}
_NEGATED_CATEGORIES = {sre.CATEGORY_NOT_DIGIT: sre.CATEGORY_DIGIT, sre.CATEGORY_NOT_WORD: sre.CATEGORY_WORD,
                       sre.CATEGORY_NOT_SPACE: sre.CATEGORY_SPACE}
_LINE_TERMINATORS: Ranges = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]  # what `.` excludes
_STARTS = (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING)
_ENDS = (sre.AT_END, sre.AT_END_STRING)
_CLASS_META = set("\\[]^-&~|")


def json_string_regex(pattern: str) -> str:
    """Regex (Rust syntax) for the JSON text of the strings `pattern` finds a match in."""
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as e:
        raise GrammarError(f"cannot translate the pattern {pattern!r}: {e}") from None
    if parsed.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL):
        raise GrammarError(f"cannot translate the pattern {pattern!r}: inline flags are not supported")
    return f"(?:{_sequence(list(parsed), pattern, first=True, last=True)})"


# ---------------------------------------------------------------------------- code point sets
def _normalize(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for lo, hi in _normalize(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return out


def _minus(ranges: Ranges, removed: Ranges) -> Ranges:
    return _complement(_complement(ranges) + removed)


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    return _complement(_complement(a) + _complement(b))


def _class_items(items: list) -> Ranges:
    """The code points of a parsed `[...]` (its items: LITERAL, RANGE, CATEGORY, NEGATE)."""
    ranges: Ranges = []
    negate = False
    for op, av in items:
        if op is sre.NEGATE:
            negate = True
        elif op is sre.LITERAL:
            ranges.append((av, av))
        elif op is sre.RANGE:
            ranges.append(av)
        elif op is sre.CATEGORY and av in _CATEGORIES:
            ranges += _CATEGORIES[av]
        elif op is sre.CATEGORY and av in _NEGATED_CATEGORIES:
            ranges += _complement(_CATEGORIES[_NEGATED_CATEGORIES[av]])
        else:
            raise GrammarError(f"cannot translate the class item {op} {av}")
    return _complement(ranges) if negate else _normalize(ranges)


# ---------------------------------------------------------------------------- regex text
def _json_text(code_point: int) -> str:
    """Regex for the JSON text of one character (its escape if JSON requires one)."""
    return escape_literal(json.dumps(chr(code_point), ensure_ascii=False)[1:-1])


def _class_member(code_point: int) -> str:
    ch = chr(code_point)
    return "\\" + ch if ch in _CLASS_META else ch


def _set(ranges: Ranges, pattern: str) -> str:
    """Regex for one character from `ranges` (control characters left out): the raw ones
    as a class, then the escapes of `"` and `\\` where the set has them."""
    ranges = _minus(ranges, _SURROGATES)
    raw = _minus(ranges, _MUST_ESCAPE)
    escaped = [c for lo, hi in _intersect(ranges, _QUOTE_AND_BACKSLASH) for c in range(lo, hi + 1)]
    parts = [_json_text(c) for c in escaped]
    if raw:
        members = (_class_member(lo) if lo == hi else f"{_class_member(lo)}-{_class_member(hi)}" for lo, hi in raw)
        parts.insert(0, "[" + "".join(members) + "]")
    if not parts:
        raise GrammarError(f"cannot translate the pattern {pattern!r}: a class matches no character")
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


_ANY_TEXT = _set([(0, MAX_CODE_POINT)], "") + "*"  # what an unanchored pattern allows around it


def _sequence(items: list, pattern: str, first: bool = False, last: bool = False) -> str:
    """`first`/`last`: the sequence starts/ends an alternative of the whole pattern, where
    without `^`/`$` any characters may come before/after it (search semantics)."""
    head = tail = ""
    if first and items and items[0][0] is sre.AT and items[0][1] in _STARTS:
        items, first = items[1:], False
    if last and items and items[-1][0] is sre.AT and items[-1][1] in _ENDS:
        items, last = items[:-1], False
    if first and not (items and items[0][0] in (sre.BRANCH, sre.SUBPATTERN)):  # else its parts decide
        head, first = _ANY_TEXT, False
    if last and not (items and items[-1][0] in (sre.BRANCH, sre.SUBPATTERN)):
        tail, last = _ANY_TEXT, False
    body = "".join(_item(op, av, pattern, first and i == 0, last and i == len(items) - 1)
                   for i, (op, av) in enumerate(items))
    return head + body + tail


def _item(op, av, pattern: str, first: bool, last: bool) -> str:
    if op is sre.LITERAL:
        return _json_text(av)
    if op is sre.NOT_LITERAL:
        return _set(_complement([(av, av)]), pattern)
    if op is sre.ANY:
        return _set(_complement(_LINE_TERMINATORS), pattern)
    if op is sre.IN:
        return _set(_class_items(av), pattern)
    if op is sre.BRANCH:
        return "(?:" + "|".join(_sequence(list(alt), pattern, first, last) for alt in av[1]) + ")"
    if op is sre.SUBPATTERN:
        _, add_flags, del_flags, sub = av
        if add_flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL) or del_flags:
            raise GrammarError(f"cannot translate the pattern {pattern!r}: inline flags are not supported")
        return "(?:" + _sequence(list(sub), pattern, first, last) + ")"
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        lo, hi, sub = av
        body = "(?:" + _sequence(list(sub), pattern) + ")"
        return body + ("{%d,}" % lo if hi == sre.MAXREPEAT else "{%d,%d}" % (lo, hi))
    what = "an anchor inside the pattern" if op is sre.AT else str(op).lower()
    raise GrammarError(f"cannot translate the pattern {pattern!r}: {what} is not supported")
