"""Keyword probes: does a backend really enforce a JSON-schema feature?

Each probe is (feature, schema, valid instance, invalid instance). A backend enforces
the feature when the valid instance's tokens (then EOS) are accepted and the invalid
one is refused somewhere. A tuple of invalid instances (a JSON instance is never a
tuple) checks several ways to break the schema: each must be refused. `probe_backend`
compiles with strict=False (bypassing our own feature check) and reports per feature:
    "enforced"  valid accepted, invalid rejected
    "ignored"   both accepted: the backend silently drops the keyword
    "broken"    the valid instance is rejected
    "error"     the backend refuses to compile the schema
Backends list as supported only "enforced" features (tests/unit/test_constrained_keywords.py).
"""

from __future__ import annotations

import json
from typing import Any

from runtime.constrained.base import GrammarError, GrammarSpec

STR, INT, NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
ARR, OBJ = {"type": "array"}, {"type": "object"}

PROBES: list[tuple[str, Any, Any, Any]] = [
    ("type", STR, "a", 1),
    ("enum", {"enum": ["a", "b"]}, "b", "c"),
    ("const", {"const": "a"}, "a", "b"),
    ("properties", {**OBJ, "properties": {"a": INT}}, {"a": 1}, {"a": "x"}),
    ("required", {**OBJ, "properties": {"a": INT, "b": INT}, "required": ["b"]}, {"b": 1}, {"a": 1}),
    ("required-unlisted", {**OBJ, "properties": {"a": INT}, "required": ["b"]}, {"a": 1, "b": 2}, {"a": 1}),
    ("additionalProperties", {**OBJ, "additionalProperties": INT}, {"k": 1}, {"k": "x"}),
    ("items", {**ARR, "items": INT}, [1, 2], [1, "x"]),
    ("prefixItems", {**ARR, "prefixItems": [INT, STR], "items": False}, [1, "x"], ["x", 1]),
    ("items:array", {**ARR, "items": [INT, STR], "additionalItems": False}, [1, "x"], ["x", 1]),
    ("additionalItems", {**ARR, "items": [INT], "additionalItems": STR}, [1, "x"], [1, 2]),
    ("minItems", {**ARR, "items": INT, "minItems": 2}, [1, 2], [1]),
    ("maxItems", {**ARR, "items": INT, "maxItems": 1}, [1], [1, 2]),
    ("uniqueItems", {**ARR, "items": INT, "uniqueItems": True}, [1, 2], [1, 1]),
    ("contains", {**ARR, "items": INT, "contains": {"const": 5}}, [1, 5], [1, 2]),
    ("minContains", {**ARR, "items": INT, "contains": {"const": 5}, "minContains": 2}, [5, 5], [5, 1]),
    ("maxContains", {**ARR, "items": INT, "contains": {"const": 5}, "maxContains": 1}, [5, 1], [5, 5]),
    ("anyOf", {"anyOf": [INT, {"type": "boolean"}]}, True, "x"),
    ("oneOf", {"oneOf": [INT, STR]}, "x", True),  # disjoint branches: anyOf semantics are exact
    ("oneOf:overlapping", {"oneOf": [INT, NUM]}, 1.5, 1),
    ("allOf", {"allOf": [INT, {"minimum": 3}]}, 4, 2),
    ("not", {**INT, "not": {"const": 3}}, 4, 3),
    ("if", {**INT, "if": {"minimum": 10}, "then": {"multipleOf": 2}}, 12, 11),
    ("$ref", {"$defs": {"n": INT}, **OBJ, "properties": {"a": {"$ref": "#/$defs/n"}}}, {"a": 1}, {"a": "x"}),
    ("pattern", {**STR, "pattern": "^[a-c]+$"}, "abc", "abd"),
    ("minLength", {**STR, "minLength": 3}, "abc", "ab"),
    ("maxLength", {**STR, "maxLength": 2}, "ab", "abc"),
    ("minimum", {**INT, "minimum": 3}, 3, 2),
    ("maximum", {**NUM, "maximum": 3.5}, 3.5, 4),
    ("exclusiveMinimum", {**INT, "exclusiveMinimum": 3}, 4, 3),
    ("exclusiveMaximum", {**INT, "exclusiveMaximum": 3}, 2, 3),
    ("multipleOf", {**INT, "multipleOf": 5}, 10, 11),
    ("multipleOf:number", {**NUM, "multipleOf": 0.5}, 1.5, 1.2),
    ("multipleOf+range", {**INT, "multipleOf": 5, "minimum": 0, "maximum": 10**6}, 10, 11),
    ("pattern+length", {**STR, "pattern": "^[a-z]+$", "maxLength": 3}, "abc", "A1"),  # length ok, pattern not
    # each invalid instance breaks one of the two keywords only
    ("format+pattern", {**STR, "format": "date", "pattern": "^2"}, "2024-02-29", ("2abc", "1999-01-01")),
    ("format+length", {**STR, "format": "email", "maxLength": 7}, "a@b.com", ("abcdef", "ab@c.com")),
    ("pattern:lookaround", {**STR, "pattern": "^(?=.*[0-9])[a-z0-9]{2,4}$"}, "ab1", "abc"),
    ("patternProperties", {**OBJ, "patternProperties": {"^x[a-z]*$": INT}, "additionalProperties": False},
     {"xa": 1}, {"ya": 1}),
    ("propertyNames", {**OBJ, "propertyNames": {"pattern": "^[a-c]+$"}}, {"ab": 1}, {"ad": 1}),
    ("minProperties", {**OBJ, "additionalProperties": INT, "minProperties": 2}, {"a": 1, "b": 2}, {"a": 1}),
    ("maxProperties", {**OBJ, "additionalProperties": INT, "maxProperties": 1}, {"a": 1}, {"a": 1, "b": 2}),
    ("dependentRequired", {**OBJ, "properties": {"a": INT, "b": INT}, "dependentRequired": {"a": ["b"]}},
     {"a": 1, "b": 2}, {"a": 1}),
    ("dependentSchemas", {**OBJ, "properties": {"a": INT, "b": INT}, "dependentSchemas": {"a": {"required": ["b"]}}},
     {"a": 1, "b": 2}, {"a": 1}),
    ("unevaluatedProperties", {**OBJ, "properties": {"a": INT}, "unevaluatedProperties": False},
     {"a": 1}, {"a": 1, "b": 1}),
    ("anyOf+siblings", {**OBJ, "properties": {"a": INT, "b": INT}, "anyOf": [{"required": ["a"]},
                                                                         {"required": ["b"]}]}, {"a": 1}, {}),
    ("oneOf+siblings", {"maxLength": 2, "oneOf": [STR, INT]}, "ab", "abc"),
    ("$ref+siblings", {"$defs": {"p": INT}, **OBJ, "properties": {"a": {"$ref": "#/$defs/p", "minimum": 3}}},
     {"a": 3}, {"a": 1}),
    ("$ref:anchor", {"definitions": {"p": {"id": "#p", **INT, "minimum": 0}}, **OBJ, "properties": {
        "a": {"$ref": "#p"}}}, {"a": 1}, {"a": -1}),
    ("untyped-constraint", {"pattern": "^a+$"}, "aa", "b"),
    ("enum+constraint", {"enum": ["a", "abc"], "minLength": 2}, "abc", "a"),
    ("enum+type", {**STR, "enum": ["a", 1]}, "a", 1),
    ("format:date", {**STR, "format": "date"}, "2024-02-29", "yesterday"),
    ("format:time", {**STR, "format": "time"}, "12:34:56Z", "12:34:56"),  # RFC 3339: the offset is required
    ("format:date-time", {**STR, "format": "date-time"}, "2024-02-29T12:34:56Z", "2024-02-29T12:34:56"),
    ("format:duration", {**STR, "format": "duration"}, "P3D", "3 days"),
    ("format:email", {**STR, "format": "email"}, "a@b.com", "a.b.com"),
    ("format:ipv4", {**STR, "format": "ipv4"}, "10.0.0.1", "10.0.0"),
    ("format:ipv6", {**STR, "format": "ipv6"}, "::1", "1::2::3"),
    ("format:hostname", {**STR, "format": "hostname"}, "example.com", "-bad-.com_"),
    ("format:uuid", {**STR, "format": "uuid"}, "123e4567-e89b-12d3-a456-426614174000", "123e4567"),
    ("format:uri", {**STR, "format": "uri"}, "https://example.com/x", "not a uri"),
    ("format:uri-reference", {**STR, "format": "uri-reference"}, "/a/b", "a b"),
    ("format:uri-template", {**STR, "format": "uri-template"}, "/a/{b}", "/a/{b"),
    ("format:json-pointer", {**STR, "format": "json-pointer"}, "/a/b", "a/b"),
    ("format:relative-json-pointer", {**STR, "format": "relative-json-pointer"}, "0/a", "/a"),
    ("format:regex", {**STR, "format": "regex"}, "a+", "(a"),
    ("format:idn-email", {**STR, "format": "idn-email"}, "a@b.com", "a.b.com"),
    ("format:iri", {**STR, "format": "iri"}, "https://example.com", "not an iri"),
]


def _accepts(backend, compiled, text: str) -> bool:
    tokenize = getattr(backend, "probe_tokenize", None) or backend.tokenizer.encode
    matcher = backend.new_matcher(compiled)
    for t in tokenize(text):
        if not matcher.accept_token(t):
            return False
    return matcher.accept_token(backend.vocab.eos_ids[0]) and matcher.is_terminated()


def probe_feature(backend, schema: Any, valid: Any, invalid: Any) -> str:
    try:
        compiled = backend.compile(GrammarSpec.from_json_schema(schema, strict=False))
    except GrammarError:
        return "error"
    dump = lambda x: json.dumps(x, separators=(",", ":"), ensure_ascii=False)  # noqa: E731
    if not _accepts(backend, compiled, dump(valid)):
        return "broken"
    invalids = invalid if isinstance(invalid, tuple) else (invalid,)
    return "ignored" if any(_accepts(backend, compiled, dump(i)) for i in invalids) else "enforced"


def probe_backend(backend, features: list[str] | None = None) -> dict[str, str]:
    return {f: probe_feature(backend, s, v, i) for f, s, v, i in PROBES if features is None or f in features}
