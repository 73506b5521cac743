"""Honest JSON-schema support: every feature a backend claims is enforced (probed with a
valid and an invalid instance), every probed feature it does not claim is a GrammarError
in strict mode; plus the feature walker itself. xgrammar and outlines are probed on a
256-byte vocabulary (outlines' compile walks the whole vocabulary), llguidance on Qwen's."""

from __future__ import annotations

import re

import pytest

from runtime.constrained import GrammarError, GrammarSpec, UnsupportedSchemaError
from runtime.constrained.probes import PROBES, probe_backend
from runtime.constrained.schema_check import close_objects, schema_features
from runtime.constrained.testing import ByteTokenizer, shared_backend

BYTE_TOKENIZER = ByteTokenizer()


@pytest.fixture(scope="module", params=["xgrammar", "llguidance", "outlines"])
def backend(request, tokenizer):
    if request.param == "llguidance":  # needs a real fast tokenizer
        return shared_backend("llguidance", tokenizer, 151_936, [151645, 151643])
    tok = BYTE_TOKENIZER
    return shared_backend(request.param, tok, len(tok) + 5, tok.eos_token_ids)


def test_claimed_features_are_enforced(backend):
    probed = {f for f, *_ in PROBES}
    claimed = sorted(set(backend.supported_features) & probed)
    results = probe_backend(backend, claimed)
    assert {f: r for f, r in results.items() if r != "enforced"} == {}
    # every claimed feature has a probe (so the claim is tested)
    assert set(backend.supported_features) <= probed


def test_unclaimed_features_are_errors_when_strict(backend):
    for feature, schema, _, _ in PROBES:
        if feature in backend.supported_features:
            continue
        with pytest.raises(UnsupportedSchemaError, match="cannot enforce") as info:
            backend.compile(GrammarSpec.from_json_schema(schema))
        assert feature in str(info.value)


def test_outlines_json_object_regex():
    """Indexing any-JSON takes seconds even on 259 tokens: check the regex itself."""
    tok = BYTE_TOKENIZER
    backend = shared_backend("outlines", tok, len(tok) + 5, tok.eos_token_ids)
    regex = backend.regex_for(GrammarSpec.json_object())
    assert re.fullmatch(regex, '{"k":[1,{"x":null}],"s":"v"}')
    assert not re.fullmatch(regex, "[1]") and not re.fullmatch(regex, '{"k": 1}')  # compact
    assert re.fullmatch(backend.regex_for(GrammarSpec.json_object(whitespace="bounded")), '{"k": 1}')


def test_outlines_unconstrained_subschemas_stay_inside_their_object():
    """outlines-core does not parenthesize the any-value alternation of `{}`: a property
    with an empty schema let a bare top-level string through (maskbench BFCL_java_7)."""
    tok = BYTE_TOKENIZER
    backend = shared_backend("outlines", tok, len(tok) + 5, tok.eos_token_ids)
    for empty in ({}, {"description": "anything"}, True):
        schema = {"type": "object", "properties": {"a": empty, "b": {"type": "array", "items": empty}},
                  "required": ["a"], "additionalProperties": False}
        regex = backend.regex_for(GrammarSpec.from_json_schema(schema))
        for bare in ('"abc"', "null", "1", "[1]"):
            assert not re.fullmatch(regex, bare)
        for value in ('"x"', "null", "-1.5", "[1,{}]", '{"k":[true]}'):
            assert re.fullmatch(regex, '{"a":' + value + ',"b":[' + value + "]}")


def test_outlines_ignores_object_keywords_under_another_type():
    """outlines-core generated `{}` for an array schema that also had `properties: {}` and
    `additionalProperties: false` (maskbench Github_easy o45174)."""
    tok = BYTE_TOKENIZER
    backend = shared_backend("outlines", tok, len(tok) + 5, tok.eos_token_ids)
    schema = {"type": "array", "items": {"type": "integer"}, "properties": {}, "additionalProperties": False}
    regex = backend.regex_for(GrammarSpec.from_json_schema(schema))
    assert re.fullmatch(regex, "[1,2]") and re.fullmatch(regex, "[]")
    assert not re.fullmatch(regex, "{}")
    nested = {"type": "object", "properties": {"n": {"type": ["integer", "null"], "items": {"type": "string"},
                                                     "properties": {"a": {"type": "string"}}}},
              "required": ["n"], "additionalProperties": False}
    regex = backend.regex_for(GrammarSpec.from_json_schema(nested))
    assert re.fullmatch(regex, '{"n":3}') and re.fullmatch(regex, '{"n":null}')
    assert not re.fullmatch(regex, '{"n":{"a":"x"}}') and not re.fullmatch(regex, '{"n":["x"]}')


def test_outlines_patterns_match_json_text():
    """outlines-core pastes a pattern between quotes as it is: `a|b` became `"a` or `b"`,
    `[^:]` produced raw quotes (maskbench Github_easy o58442), `\\d` Unicode digits
    (Github_trivial o77414), and a lone `^` was refused (Github_trivial o34210)."""
    tok = BYTE_TOKENIZER
    backend = shared_backend("outlines", tok, len(tok) + 5, tok.eos_token_ids)
    schema = {"type": "object", "additionalProperties": False, "required": ["x", "y", "z"],
              "properties": {"x": {"type": "string", "pattern": "ab|cd"},
                             "y": {"type": "string", "pattern": "^\\d+#"},
                             "z": {"type": "string", "pattern": "^a\\$$"}}}  # `\$`: a literal dollar
    regex = backend.regex_for(GrammarSpec.from_json_schema(schema))
    for good in ('{"x":"ab","y":"12#","z":"a$"}', '{"x":"cd","y":"1#?","z":"a$"}', '{"x":"q\\"cd","y":"1#","z":"a$"}'):
        assert re.fullmatch(regex, good), good
    for bad in ('{"x":"ab,"y":"1#","z":"a$"}', '{"x":cd","y":"1#","z":"a$"}', '{"x":"ab","y":"#","z":"a$"}',
                '{"x":"ab","y":"1#","z":"a"}', '{"x":"q"cd","y":"1#","z":"a$"}', '{"x":"ab","y":"\u0663#","z":"a$"}'):
        assert not re.fullmatch(regex, bad), bad


def test_outlines_refuses_property_names_json_must_escape():
    tok = BYTE_TOKENIZER
    backend = shared_backend("outlines", tok, len(tok) + 5, tok.eos_token_ids)
    for name in ('k"q', "k\\q", "k\nq"):
        schema = {"type": "object", "properties": {name: {"type": "integer"}}, "required": [name]}
        with pytest.raises(GrammarError, match="property names unescaped"):
            backend.regex_for(GrammarSpec.from_json_schema(schema))
    assert backend.regex_for(GrammarSpec.from_json_schema({"type": "object", "properties": {"a.b(c)$": {}}}))


def test_outlines_reads_untyped_object_and_array_nodes_by_their_keywords():
    """outlines-core refused `{"additionalProperties": {...}}` without a `type`
    (maskbench Github_medium o78136); such nodes are read as objects (arrays for
    `items`), as the other backends read them. It also refused an object closed by
    `additionalProperties: false` without `properties` (Github_easy o6263)."""
    tok = BYTE_TOKENIZER
    backend = shared_backend("outlines", tok, len(tok) + 5, tok.eos_token_ids)
    schema = {"type": "object", "additionalProperties": False, "required": ["m", "l"],
              "properties": {"m": {"additionalProperties": {"enum": ["pong", "fail"]}},
                             "l": {"items": {"type": "integer"}}}}
    regex = backend.regex_for(GrammarSpec.from_json_schema(schema))
    assert re.fullmatch(regex, '{"m":{"a":"pong","b":"fail"},"l":[1,2]}') and re.fullmatch(regex, '{"m":{},"l":[]}')
    assert not re.fullmatch(regex, '{"m":{"a":"x"},"l":[1]}') and not re.fullmatch(regex, '{"m":{},"l":["x"]}')
    closed = {"type": "object", "properties": {"c": {"type": "object", "additionalProperties": False}}}
    regex = backend.regex_for(GrammarSpec.from_json_schema(closed))  # outlines-core refused the bare `false`
    assert re.fullmatch(regex, '{"c":{}}') and not re.fullmatch(regex, '{"c":{"a":1}}')


def test_schema_features():
    schema = {
        "$defs": {"a": {"type": "string", "format": "email"}},
        "type": "object",
        "title": "ignored", "x-custom": {"uniqueItems": True},  # annotations / unknown keys: no features
        "properties": {
            "format": {"$ref": "#/$defs/a"},  # a property *named* format is not the keyword
            "tuple": {"type": "array", "items": [{"type": "integer"}]},
            "remote": {"$ref": "https://example.com/s.json"},
            "pick": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "kind": {"oneOf": [{"properties": {"t": {"const": "a"}}, "required": ["t"]},
                               {"properties": {"t": {"const": "b"}}, "required": ["t"]}]},
            "loose": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
        },
    }
    assert schema_features(schema) == {
        "type", "properties", "$ref", "format:email", "items:array", "$ref:remote", "oneOf",
        "oneOf:overlapping", "const", "required"}


def test_schema_features_follow_refs_anywhere_and_see_enum_type_conflicts():
    # a $ref into a non-standard location (maskbench Github_easy o87942): its minLength
    # must be seen, or a backend that cannot enforce it would compile the schema anyway
    schema = {"resourceDefinitions": {"acct": {"type": "object", "properties": {
                  "name": {"type": "string", "minLength": 1}, "self": {"$ref": "#/resourceDefinitions/acct"}}}},
              "type": "object", "properties": {"acct": {"$ref": "#/resourceDefinitions/acct"},
                                               "dangling": {"$ref": "#/nowhere"}}}
    assert schema_features(schema) == {"type", "properties", "$ref", "minLength"}
    # enum values the node's own type excludes (maskbench Github_hard o31171)
    assert "enum+type" in schema_features({"type": "object", "enum": ["none", "trace"]})
    assert "enum+type" in schema_features({"type": "integer", "const": 1.5})
    assert "enum+type" not in schema_features({"type": ["integer", "null"], "enum": [1, 2.0, None]})


def test_close_objects():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}},
              "patternProperties": {"^x": {}}}
    closed = close_objects(schema)
    assert "additionalProperties" not in closed  # patternProperties: left alone
    assert closed["properties"]["a"]["additionalProperties"] is False
    composed = {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}
    assert close_objects(composed) == composed  # closing allOf branches would reject valid input
