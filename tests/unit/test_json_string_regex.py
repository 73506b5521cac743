"""json_string_regex: a JSON-schema pattern as a regex over the string's JSON text."""

import itertools
import json
import re

import pytest

from runtime.constrained import GrammarError
from runtime.constrained.json_string_regex import json_string_regex

PATTERNS = ["^[a-c]+$", "ab|cd", "^ab$|^cd$", "^2", "b$", "", "^$", "^(a|b)$", "(^a|b$)", "^[^:\\s]+:[^:\\s]+$",
            '^a"b$', "^a\\\\b$", "^.b$", "^\\d{2}\\w?$", "^[\\D]$", '^[^a]$', "a{2,}", "^(ab)*$", "^\\$"]
ALPHABET = ["a", "b", "c", "2", ":", " ", '"', "\\", "\u00e9"]


def strings(max_len: int = 4):
    for n in range(max_len + 1):
        for chars in itertools.product(ALPHABET, repeat=n):
            yield "".join(chars)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_matches_the_json_text_of_exactly_the_strings_the_pattern_finds(pattern):
    """Every string over a small alphabet (quote and backslash included, length <= 4):
    the translation matches its JSON text iff the pattern matches somewhere in it
    (`\\d \\w \\s` are ASCII, as in ECMA 262)."""
    translated = re.compile(json_string_regex(pattern))
    for s in strings():
        text = json.dumps(s, ensure_ascii=False)[1:-1]
        assert (translated.fullmatch(text) is not None) == (re.search(pattern, s, re.ASCII) is not None), (pattern, s)


def test_never_a_raw_quote_backslash_or_control_character():
    translated = re.compile(json_string_regex("^[^:]*$"))
    assert translated.fullmatch('a\\"b') and translated.fullmatch("a\\\\b")
    for raw in ('a"b', "a\\b", "a\nb", "a\x01b"):
        assert not translated.fullmatch(raw), raw
    # a literal control character is written as its escape
    assert re.fullmatch(json_string_regex("^a\\nb$"), "a\\nb")


@pytest.mark.parametrize("pattern, reason", [
    ("a^b", "anchor"), ("\\bx", "anchor"), ("(?i)a", "flags"), ("(a)\\1", "groupref"), ("(?=a)a", "assert"),
    ("(ab", "missing"), ("^[^\\s\\S]$", "no character"),
])
def test_what_cannot_be_translated_is_a_grammar_error(pattern, reason):
    with pytest.raises(GrammarError, match=reason):
        json_string_regex(pattern)
