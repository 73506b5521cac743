"""Grammar-constrained decoding on the real Qwen2.5 vocabulary, for every backend:
random walks through the mask (regex, choices, EBNF/Lark files, structural tags),
vocabulary invariants (EOS, padded ids, added tokens), errors, rollback/copy,
jump-forward and the reasoning prefix. JSON-schema walks: test_constrained_schemas.py."""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import jsonschema
import pytest

from runtime.constrained import CompileTimeoutError, GrammarError, GrammarSpec, InvalidSchemaError, get_backend
from runtime.constrained.testing import accepts_text, allowed_ids, random_walk, shared_backend

V = 151_936  # the demo model's padded vocab
EOS = [151645, 151643]
IM_START, TOOL_CALL, TOOL_CALL_END = 151644, 151657, 151658
BACKENDS = ["xgrammar", "llguidance", "outlines"]
GRAMMAR_BACKENDS = ["xgrammar", "llguidance"]  # ebnf / lark / structural_tag
IPV4 = r"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
ISO_DATE = r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"


@pytest.fixture(scope="module")
def backend(request, tokenizer):
    return shared_backend(request.param, tokenizer, V, EOS)


def by_name(names):
    return pytest.mark.parametrize("backend", names, indirect=True)


def walks(backend, spec, n=6, seed=0, max_steps=120, matcher_setup=None):
    compiled = backend.compile(spec)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        m = backend.new_matcher(compiled)
        if matcher_setup:
            matcher_setup(m)
        out.append(random_walk(m, backend.vocab, rng, max_steps=max_steps))
    return out


# ---------------------------------------------------------------------------- specs
def test_spec_canonical_and_cache_key():
    a = GrammarSpec.from_json_schema({"type": "object", "properties": {"b": {}, "a": {}}})
    b = GrammarSpec.from_json_schema('{"type": "object",  "properties": {"b": {}, "a": {}}}')
    assert a == b and a.value == '{"type":"object","properties":{"b":{},"a":{}}}'  # key order kept
    assert a.cache_key("xgrammar") == b.cache_key("xgrammar") != a.cache_key("llguidance")
    assert a.cache_key("x") != GrammarSpec(a.kind, a.value, whitespace="bounded").cache_key("x")
    assert GrammarSpec.from_choices(["a", "b"]).value == '["a","b"]'
    assert GrammarSpec.from_ebnf("arithmetic").kind == "ebnf"
    assert GrammarSpec.from_ebnf("bullet_list").kind == "lark"
    with pytest.raises(GrammarError, match="not valid JSON"):
        GrammarSpec.from_json_schema("{nope")
    with pytest.raises(GrammarError, match="whitespace"):
        GrammarSpec("regex", "a", whitespace="lots")
    with pytest.raises(GrammarError, match="triggers"):
        GrammarSpec.from_structural_tag({"structures": [{"begin": "<a>", "schema": {}, "end": ""}],
                                         "triggers": ["<b>"]})


def test_spec_from_sampling_params():
    from runtime.core import SamplingParams

    assert GrammarSpec.from_sampling_params(SamplingParams()) is None
    assert GrammarSpec.from_sampling_params(SamplingParams(regex="a+")) == GrammarSpec("regex", "a+")
    spec = GrammarSpec.from_sampling_params(SamplingParams(json_schema={"type": "integer"}))
    assert (spec.kind, spec.value) == ("json_schema", '{"type":"integer"}')
    assert GrammarSpec.from_sampling_params(SamplingParams(ebnf="json")).value.startswith("# Any JSON")
    tag = {"structures": [{"begin": "<tool_call>", "schema": {"type": "object"}, "end": "</tool_call>"}],
           "triggers": ["<tool_call>"]}
    assert GrammarSpec.from_sampling_params(SamplingParams(structural_tag=tag)).kind == "structural_tag"


def test_registry_unknown_backend(tokenizer):
    with pytest.raises(ValueError, match="available: .*xgrammar"):
        get_backend("nope", tokenizer, V, EOS)


# ---------------------------------------------------------------------------- regex / choices
@by_name(BACKENDS)
@pytest.mark.parametrize("pattern", [IPV4, ISO_DATE], ids=["ipv4", "iso_date"])
def test_regex_walks_fullmatch(backend, pattern):
    results = walks(backend, GrammarSpec.from_regex(pattern))
    assert sum(w.terminated for w in results) >= 5
    for w in results:
        if w.terminated:
            assert re.fullmatch(pattern, w.text, re.ASCII), w.text


@by_name(BACKENDS)
def test_choices(backend):
    choices = ["yes", "no", "maybe (so)", "N/A"]
    results = walks(backend, GrammarSpec.from_choices(choices), n=8)
    assert all(w.terminated and w.text in choices for w in results)
    compiled = backend.compile(GrammarSpec.from_choices(choices))
    encode = backend.tokenizer.encode
    assert accepts_text(backend.new_matcher(compiled), encode("maybe (so)"), EOS[0])
    assert not accepts_text(backend.new_matcher(compiled), encode("maybe"), EOS[0])


@by_name(BACKENDS)
def test_eos_only_where_the_grammar_may_end(backend):
    m = backend.new_matcher(backend.compile(GrammarSpec.from_regex("ab+")))
    a, b = backend.tokenizer.encode("a") + backend.tokenizer.encode("b")
    for token in (a, b):  # "" and "a" cannot end: no EOS
        ids = set(allowed_ids(m, V).tolist())
        assert not ids & set(EOS) and max(ids) < 151_643  # no added tokens, no padded ids
        assert m.accept_token(token)
    assert set(EOS) <= set(allowed_ids(m, V).tolist())  # "ab" may end
    assert not m.accept_token(IM_START) and not m.accept_token(151_700)  # refused, state unchanged
    assert m.accept_token(b) and set(EOS) <= set(allowed_ids(m, V).tolist())
    assert m.accept_token(EOS[1]) and m.is_terminated()
    assert set(allowed_ids(m, V).tolist()) == set(EOS) and not m.accept_token(b)


@by_name(BACKENDS)
def test_rollback_and_copy(backend):
    m = backend.new_matcher(backend.compile(GrammarSpec.from_regex(ISO_DATE)))
    ids = backend.tokenizer.encode("2024-05-17")
    assert accepts_text(m, ids[:3])
    twin = m.copy()
    assert accepts_text(m, ids[3:], EOS[0]) and m.is_terminated()
    m.rollback(len(ids) - 3 + 1)  # undo the EOS too
    assert not m.is_terminated()
    assert accepts_text(m, ids[3:], EOS[0])  # replays from the rolled-back state
    assert accepts_text(twin, ids[3:], EOS[1])  # the copy kept its own state
    m2 = backend.new_matcher(backend.compile(GrammarSpec.from_regex(ISO_DATE)))
    assert accepts_text(m2, ids[:2])
    m2.rollback(2)
    assert accepts_text(m2, ids, EOS[0])


# ---------------------------------------------------------------------------- grammars
@by_name(GRAMMAR_BACKENDS)
def test_arithmetic_grammar(backend):
    for w in walks(backend, GrammarSpec.from_ebnf("arithmetic"), n=6):
        if w.terminated:
            assert re.fullmatch(r"[0-9+\-*/()]+", w.text)
            try:
                eval(w.text, {"__builtins__": {}})  # noqa: S307 - digits and operators only
            except ZeroDivisionError:
                pass


@by_name(GRAMMAR_BACKENDS)
def test_shipped_grammar_files(backend):
    from runtime.constrained import grammar_files

    assert {"json", "arithmetic", "tool_call", "sql_select", "bullet_list"} <= set(grammar_files.names())
    checks = {
        "json": lambda t: json.loads(t),
        "tool_call": lambda t: json.loads(t.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")),
        "sql_select": lambda t: re.fullmatch(r"SELECT .+ FROM [a-z_][a-z0-9_]*.*;", t) or 1 / 0,
        "bullet_list": lambda t: re.fullmatch(r"(- [^\n]+\n){1,5}", t) or 1 / 0,
    }
    for name, check in checks.items():
        results = walks(backend, GrammarSpec.from_ebnf(name), n=3, max_steps=150)
        assert any(w.terminated for w in results), name
        for w in results:
            if w.terminated:
                check(w.text)


@by_name(GRAMMAR_BACKENDS)
def test_tool_call_grammar_accepts_the_added_token(backend):
    """The model writes Qwen's <tool_call> as one added token; the grammar must take it."""
    compiled = backend.compile(GrammarSpec.from_ebnf("tool_call"))
    body = backend.tokenizer.encode('\n{"name":"get_weather","arguments":{"city":"Paris"}}\n')
    assert accepts_text(backend.new_matcher(compiled), [TOOL_CALL] + body + [TOOL_CALL_END], EOS[0])


# ---------------------------------------------------------------------------- structural tags
TOOL_SCHEMA = {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": {
    "type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,20}$"}},
    "required": ["city"]}},
    "required": ["name", "arguments"]}
TAG = {"structures": [{"begin": "<tool_call>\n", "schema": TOOL_SCHEMA, "end": "\n</tool_call>"}],
       "triggers": ["<tool_call>"]}


@by_name(GRAMMAR_BACKENDS)
def test_structural_tag(backend):
    compiled = backend.compile(GrammarSpec.from_structural_tag(TAG))
    enc = backend.tokenizer.encode
    call = '\n{"name":"get_weather","arguments":{"city":"Paris"}}\n'
    # free text, the <tool_call> token, the JSON, </tool_call>, free text again, EOS
    ids = enc("Let me check. ") + [TOOL_CALL] + enc(call) + [TOOL_CALL_END] + enc(" Done.")
    assert accepts_text(backend.new_matcher(compiled), ids, EOS[0])
    # the trigger written as plain text pieces also switches the JSON on
    m = backend.new_matcher(compiled)
    assert accepts_text(m, enc("ok <") + enc("tool") + enc("_call>"))
    assert not m.accept_token(enc("hello")[0])
    # after a trigger, only the schema's JSON may follow; EOS is not allowed mid-call
    m = backend.new_matcher(compiled)
    assert accepts_text(m, [TOOL_CALL] + enc('\n{"name":"get_weather","arguments":{"city":"'))
    assert not set(allowed_ids(m, V).tolist()) & set(EOS)
    assert not accepts_text(backend.new_matcher(compiled), [TOOL_CALL] + enc('\n{"name":"rm_rf"'))
    # random walks that start inside a call produce schema-valid JSON
    results = walks(backend, GrammarSpec.from_structural_tag(TAG), n=4, max_steps=150,
                    matcher_setup=lambda m: m.accept_token(TOOL_CALL))
    assert sum(w.terminated for w in results) >= 3
    for w in results:
        if w.terminated:
            body = w.text.split("</tool_call>")[0].strip()
            jsonschema.validate(json.loads(body), TOOL_SCHEMA)


@by_name(GRAMMAR_BACKENDS)
def test_added_tokens_only_where_named(backend):
    m = backend.new_matcher(backend.compile(GrammarSpec.json_object()))
    assert accepts_text(m, backend.tokenizer.encode('{"a":"'))
    ids = set(allowed_ids(m, V).tolist())
    assert not ids & {IM_START, TOOL_CALL, TOOL_CALL_END} and max(ids) < 151_643
    assert not m.accept_token(IM_START)


# ---------------------------------------------------------------------------- unsupported / invalid
def test_outlines_rejects_grammar_kinds(tokenizer):
    backend = shared_backend("outlines", tokenizer, V, EOS)
    for spec in (GrammarSpec.from_ebnf("arithmetic"), GrammarSpec.from_structural_tag(TAG),
                 GrammarSpec.from_ebnf("bullet_list")):
        with pytest.raises(GrammarError, match=f"backend outlines does not support kind '{spec.kind}'"):
            backend.compile(spec)


def _index_children_cpu_seconds() -> dict[int, float]:
    """CPU seconds used so far by each child process running outlines_index.py."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            cmdline = (stat.parent / "cmdline").read_bytes()
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if b"outlines_index.py" in cmdline and int(fields[1]) == os.getpid():  # fields[1]: ppid
            out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child CPU time from /proc")
def test_outlines_stops_a_compile_past_its_timeout(tokenizer):
    """outlines indexes in a child process, killed at the timeout: no core stays busy
    with a compile nobody waits for, and the next compile gets a fresh child."""
    backend = shared_backend("outlines", tokenizer, V, EOS)
    slow = GrammarSpec.from_regex("[a-z]{0,3000}")  # 3,001 DFA states x 151k tokens: minutes
    backend.compile_timeout_s = 1.0
    try:
        start = time.monotonic()
        with pytest.raises(CompileTimeoutError, match="within 1.0s; the compile was stopped"):
            backend.compile(slow)
        assert time.monotonic() - start < 10
    finally:
        backend.compile_timeout_s = None
    before = _index_children_cpu_seconds()
    time.sleep(1.0)
    after = _index_children_cpu_seconds()
    busy = {pid: after[pid] - before[pid] for pid in after if pid in before and after[pid] - before[pid] > 0.3}
    assert not busy, f"index processes still computing: {busy}"
    compiled = backend.compile(GrammarSpec.from_regex(ISO_DATE))
    assert accepts_text(backend.new_matcher(compiled), backend.tokenizer.encode("2024-02-29"), EOS[0])


@by_name(BACKENDS)
def test_invalid_specs_raise_grammar_error(backend):
    with pytest.raises(GrammarError):
        backend.compile(GrammarSpec.from_regex("(ab"))
    with pytest.raises(InvalidSchemaError, match="invalid JSON schema"):
        backend.compile(GrammarSpec.from_json_schema({"type": "strin"}))
    with pytest.raises(InvalidSchemaError, match="invalid JSON schema"):
        backend.compile(GrammarSpec.from_json_schema({"type": "object", "required": "a"}))


@by_name(BACKENDS)
def test_unsupported_keywords_are_named(backend):
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "contains": {"const": 1}}
    with pytest.raises(GrammarError, match="contains, uniqueItems") as info:
        backend.compile(GrammarSpec.from_json_schema(schema))
    assert backend.name in str(info.value)
    backend.compile(GrammarSpec.from_json_schema(schema, strict=False))  # ignored on request


@by_name(GRAMMAR_BACKENDS)
def test_invalid_grammar_raises(backend):
    with pytest.raises(GrammarError):
        backend.compile(GrammarSpec.from_ebnf('root ::= "a" undefined_rule'))


# ---------------------------------------------------------------------------- jump-forward, reasoning
@by_name(GRAMMAR_BACKENDS)
def test_jump_forward(backend):
    schema = {"type": "object", "properties": {"name": {"const": "get_weather"}, "n": {"type": "integer"}},
              "required": ["name", "n"]}
    m = backend.new_matcher(backend.compile(GrammarSpec.from_json_schema(schema)))
    forced = m.jump_forward_string()
    assert forced.startswith('{"name":"get_weather"') and '"n":' in forced
    assert accepts_text(m, backend.tokenizer.encode(forced))  # the engine then feeds it back
    assert m.jump_forward_string() == ""  # an integer: nothing is forced
    assert accepts_text(m, backend.tokenizer.encode("7}"), EOS[0])


@by_name(BACKENDS)
def test_reasoning_prefix(backend):
    m = backend.new_matcher(backend.compile(GrammarSpec.from_regex("(yes|no)", reasoning=True)))
    enc = backend.tokenizer.encode
    first = set(allowed_ids(m, V).tolist())
    assert len(first) > 100_000 and not first & set(EOS)  # free text, no EOS, no added tokens
    assert max(first) < 151_643
    assert accepts_text(m, enc("Hmm, let me think"))
    assert accepts_text(m, enc("</th") + enc("ink"))
    token_bytes = backend.vocab.token_bytes
    overshoot = [t for t in range(151_643) if token_bytes[t].startswith(b">") and len(token_bytes[t]) > 1]
    assert overshoot and not any(m.accept_token(t) for t in overshoot)  # ">\n" etc. run past the marker
    assert accepts_text(m, enc(">"))
    assert all(b"yes".startswith(token_bytes[t]) or b"no".startswith(token_bytes[t]) for t in allowed_ids(m, V))
    assert accepts_text(m, enc("yes"), EOS[0])
    m.rollback(len(enc("yes")) + 1 + len(enc(">")))
    assert len(allowed_ids(m, V)) > 100_000  # back in the reasoning text
