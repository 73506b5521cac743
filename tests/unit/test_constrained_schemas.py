"""JSON-schema constraints on the real Qwen2.5 vocabulary: random walks through the mask
for maskbench-dev schemas must produce JSON that validates; whitespace stays bounded;
objects are closed; json_object gives an object."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest

from runtime.constrained import BOUNDED_WHITESPACE_MAX, GrammarSpec
from runtime.constrained.testing import accepts_text, random_walk, shared_backend

V = 151_936
EOS = [151645, 151643]
MASKBENCH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "maskbench-dev"
# small schemas that all three backends support (outlines compiles each in < 1 s here)
FAST = ["Github_trivial---o36645.json",  # enum
        "Github_easy---o48244.json",  # arrays of objects, required
        "Github_easy---o27843.json"]  # pattern, additionalProperties, items
REF = "Github_trivial---o17608.json"  # $ref (outlines needs ~10 s for it: skipped there)


@pytest.fixture(scope="module", params=["xgrammar", "llguidance", "outlines"])
def backend(request, tokenizer):
    return shared_backend(request.param, tokenizer, V, EOS)


def load_schema(name: str) -> dict:
    path = MASKBENCH / name
    if not path.exists():
        pytest.skip(f"maskbench-dev data not found at {MASKBENCH}")
    return json.loads(path.read_text())["schema"]


def ws_runs_outside_strings(text: str) -> list[int]:
    """Lengths of the whitespace runs between JSON tokens (not inside strings)."""
    runs, run, in_string, escaped = [], 0, False, False
    for ch in text:
        if in_string:
            in_string = escaped or ch != '"'
            escaped = not escaped and ch == "\\"
            continue
        if ch in " \t\n\r":
            run += 1
            continue
        if run:
            runs.append(run)
        run, in_string = 0, ch == '"'
    return runs + ([run] if run else [])


def check_walks(backend, schema, whitespace="compact", n=4, seed=0):
    compiled = backend.compile(GrammarSpec.from_json_schema(schema, whitespace=whitespace))
    rng = random.Random(seed)
    walks = [random_walk(backend.new_matcher(compiled), backend.vocab, rng, max_steps=150) for _ in range(n)]
    done = [w for w in walks if w.terminated]
    assert len(done) >= n - 1, [w.text[:80] for w in walks]
    for w in done:
        jsonschema.validate(json.loads(w.text), schema)
        runs = ws_runs_outside_strings(w.text)
        assert max(runs, default=0) <= (0 if whitespace == "compact" else BOUNDED_WHITESPACE_MAX), w.text
    return done


@pytest.mark.parametrize("name", FAST)
def test_maskbench_schema_walks_validate(backend, name):
    check_walks(backend, load_schema(name))


def test_ref_schema_walks_validate(backend):
    if backend.name == "outlines":
        pytest.skip("outlines needs ~10 s to index this schema over 151k tokens")
    check_walks(backend, load_schema(REF))


def test_bounded_whitespace(backend):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "array", "items": {
        "type": "boolean"}, "maxItems": 3}}, "required": ["a", "b"]}
    check_walks(backend, schema, whitespace="bounded", n=3)
    compiled = backend.compile(GrammarSpec.from_json_schema(schema, whitespace="bounded"))
    enc = backend.tokenizer.encode
    assert accepts_text(backend.new_matcher(compiled), enc('{ "a": 1,\n "b": [true, false]}'), EOS[0])
    assert not accepts_text(backend.new_matcher(compiled), enc('{"a":   1,"b":[]}'), EOS[0])  # 3 spaces
    compact = backend.compile(GrammarSpec.from_json_schema(schema))
    assert not accepts_text(backend.new_matcher(compact), enc('{"a": 1,"b":[]}'), EOS[0])
    assert accepts_text(backend.new_matcher(compact), enc('{"a":1,"b":[]}'), EOS[0])


def test_objects_are_closed_and_json_object(backend):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    compiled = backend.compile(GrammarSpec.from_json_schema(schema))
    enc = backend.tokenizer.encode
    assert accepts_text(backend.new_matcher(compiled), enc('{"a":1}'), EOS[0])
    assert not accepts_text(backend.new_matcher(compiled), enc('{"a":1,"zz":2}'), EOS[0])
    if backend.name == "outlines":
        return  # indexing any-JSON over 151k tokens takes minutes (see test_constrained_keywords)
    obj = backend.compile(GrammarSpec.json_object())
    assert accepts_text(backend.new_matcher(obj), enc('{"k":[1,{"x":null}],"s":"v"}'), EOS[0])
    assert not accepts_text(backend.new_matcher(obj), enc("[1]"), EOS[0])
