"""outlines backend (outlines-core): spec -> regex -> DFA `Index` over the whole
vocabulary (state -> allowed token -> next state), so per-token work is a table
lookup, but compiling walks every token through the DFA: seconds to minutes for
real JSON schemas on a 151k vocabulary, and regular languages only (no EBNF, no
recursion beyond a fixed depth, no structural tags). The Index is built in a child
process (`outlines_index`), killed when it runs past `compile_timeout_s`.

Vocabulary: an `outlines_core.Vocabulary` of our exact token bytes for text tokens
only (added tokens and padded ids never enter the DFA). outlines-core knows a single
EOS id; the matcher allows every EOS id at final states and handles EOS itself.
Whitespace: `build_regex_from_schema(whitespace_pattern="")` (compact) or
`[ \\t\\n\\r]{0,N}` (bounded).
"""

from __future__ import annotations

import json
from typing import Any

import outlines_core as oc
import torch

from runtime.constrained.base import (
    BOUNDED_WHITESPACE_MAX,
    CompiledGrammar,
    CompileTimeoutError,
    GrammarBackend,
    GrammarError,
    GrammarMatcher,
    GrammarSpec,
)
from runtime.constrained.json_string_regex import json_string_regex
from runtime.constrained.outlines_index import IndexTimeout, IndexWorkers
from runtime.constrained.regex_util import ascii_classes
from runtime.constrained.schema_check import check_schema, is_unconstrained, map_subschemas

# Features outlines-core's schema -> regex translation enforces (probed by
# tests/unit/test_constrained_keywords.py). Notably absent: minimum/maximum and
# multipleOf (silently ignored), overlapping oneOf (rejects valid instances), allOf, uniqueItems,
# patternProperties, not, if/then/else, min/maxProperties; a pattern next to min/maxLength
# (the lengths win, the pattern is dropped) and time/date-time (the offset is optional and
# only "Z"), both found by the full maskbench instance run; a format next to a pattern or
# a length (the format is dropped). Patterns, uri and email are enforced through
# `prepare_schema`'s translation, not outlines-core's own.
SUPPORTED_FEATURES = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "anyOf", "oneOf", "$ref", "pattern", "minLength", "maxLength",
    "format:date", "format:uuid", "format:uri", "format:email",
})
_MAX_ROLLBACK = 1 << 20  # effectively unlimited: the Guide keeps one int per token


_ANY_VALUE = {"anyOf": [{"type": t} for t in ("null", "boolean", "number", "string", "array", "object")]}

# keywords that only constrain values of one type (JSON Schema ignores them for others)
_TYPE_KEYWORDS = {
    "object": ("properties", "additionalProperties", "required", "patternProperties", "minProperties",
               "maxProperties", "propertyNames", "dependentRequired", "dependentSchemas", "dependencies"),
    "array": ("items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains"),
}
# keywords that imply their type when a schema has no "type" (as schema_check reads them)
_IMPLIED_TYPE = {"properties": "object", "additionalProperties": "object", "items": "array",
                 "prefixItems": "array"}
_APPLICATORS = ("enum", "const", "anyOf", "oneOf", "allOf", "$ref")


def _format_regex(name: str) -> str:
    """outlines-core's regex for a string format, as a regex over the string's JSON text."""
    quoted = oc.json_schema.build_regex_from_schema(json.dumps({"type": "string", "format": name}))
    return json_string_regex(quoted[1:-1])  # without the quotes around it


_FORMAT_REGEX = {name: _format_regex(name) for name in ("uri", "email")}


def prepare_schema(schema: Any) -> Any:
    """A copy of `schema` that outlines-core translates correctly. Each rewrite works
    around a translation bug that `bench grammar` found; each keeps the schema's meaning
    or narrows it (an output of the rewritten schema is valid for the original):
    - A nested unconstrained subschema (`{}`) becomes an explicit anyOf of the six JSON
      types: outlines-core does not parenthesize its own any-value alternation, so
      `{"properties": {"a": {}}}` also admitted a bare top-level string (BFCL_java_7).
    - Keywords of a type that the node's `type` excludes constrain nothing and are
      dropped: outlines-core read `properties` under `"type": "array"` and generated an
      object (Github_easy o45174).
    - A node with no `type` whose keywords imply one (`additionalProperties`, `items`)
      gets that type: outlines-core refused such nodes (Github_medium o78136), and
      `additionalProperties: false` without `properties` (Github_easy o6263).
    - A `pattern` is translated to a regex over the string's JSON text
      (`json_string_regex`): outlines-core pastes it between quotes as it is, so `a|b`
      became `"a` or `b"`, `[^:]` produced raw quotes (Github_easy o58442), and a lone
      `^` made it refuse (Github_trivial o34210). `uri` and `email`, whose regexes in
      outlines-core have the same flaw, become patterns translated the same way.
    Property names that JSON must escape are refused (outlines-core writes them raw).
    """
    def fix(node: Any, top: bool) -> Any:
        if not top and is_unconstrained(node):
            return dict(_ANY_VALUE)
        node = map_subschemas(node, lambda child: fix(child, False))
        if not isinstance(node, dict):
            return node
        declared = node.get("type")
        if declared is None and not any(k in node for k in _APPLICATORS):
            implied = {_IMPLIED_TYPE[k] for k in node if k in _IMPLIED_TYPE}
            if len(implied) == 1:
                declared = node["type"] = implied.pop()
        if isinstance(declared, (str, list)):
            types = {declared} if isinstance(declared, str) else set(declared)
            for kind, keywords in _TYPE_KEYWORDS.items():
                if kind not in types:
                    node = {k: v for k, v in node.items() if k not in keywords}
        if any(json.dumps(name, ensure_ascii=False)[1:-1] != name for name in node.get("properties") or ()):
            raise GrammarError("outlines writes property names unescaped: a name with a quote, a backslash "
                               "or a control character would not be JSON")
        if node.get("additionalProperties") is False and "properties" not in node:
            node["properties"] = {}  # the same meaning; alone, `false` is refused
        if isinstance(node.get("pattern"), str):
            node["pattern"] = json_string_regex(node["pattern"])
        elif node.get("format") in _FORMAT_REGEX:
            node["pattern"] = _FORMAT_REGEX[node.pop("format")]
        return node

    return fix(schema, True)


class OutlinesBackend(GrammarBackend):
    name = "outlines"
    supported_kinds = frozenset({"json_schema", "json_object", "regex", "choices"})
    supported_features = SUPPORTED_FEATURES

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        super().__init__(tokenizer, vocab_size, eos_token_ids)
        by_bytes: dict[bytes, list[int]] = {}
        for token_id, data in enumerate(self.vocab.token_bytes):
            if data and self.vocab.is_text_token(token_id):
                by_bytes.setdefault(data, []).append(token_id)
        self._index_workers = IndexWorkers(self.vocab.eos_ids[0], by_bytes)

    def close(self) -> None:
        """Stop the idle index processes (they also exit with this process)."""
        self._index_workers.close()

    def _whitespace(self, spec: GrammarSpec) -> str:
        return "" if spec.whitespace == "compact" else rf"[ \t\n\r]{{0,{BOUNDED_WHITESPACE_MAX}}}"

    def regex_for(self, spec: GrammarSpec) -> str:
        """The regex outlines compiles for `spec` (also used by tests to probe keywords)."""
        if spec.kind == "regex":
            return ascii_classes(spec.value)
        if spec.kind == "choices":
            return spec.choice_regex()
        schema = {"type": "object"} if spec.kind == "json_object" else spec.parsed_value()
        if spec.kind == "json_schema":
            check_schema(schema, self.name, self.supported_features, spec.strict)
        try:
            schema = prepare_schema(schema)
            return oc.json_schema.build_regex_from_schema(json.dumps(schema),
                                                          whitespace_pattern=self._whitespace(spec))
        except Exception as e:
            raise GrammarError(f"outlines cannot translate this JSON schema: {e}") from None

    def _compile(self, spec: GrammarSpec) -> CompiledGrammar:
        regex = self.regex_for(spec)
        try:
            index = self._index_workers.build(regex, self.compile_timeout_s)
        except IndexTimeout:
            raise CompileTimeoutError(f"outlines did not finish indexing the {spec.kind} grammar within "
                                      f"{self.compile_timeout_s}s; the compile was stopped") from None
        except RuntimeError as e:
            raise GrammarError(f"outlines cannot compile the {spec.kind} regex: {e}") from None
        return CompiledGrammar(spec, index)

    def _new_matcher(self, compiled: CompiledGrammar) -> GrammarMatcher:
        return OutlinesMatcher(oc.Guide(compiled.handle, max_rollback=_MAX_ROLLBACK), self)


class OutlinesMatcher(GrammarMatcher):
    """The Guide holds the DFA state and its history; EOS never enters the Guide."""

    def __init__(self, guide: oc.Guide, backend: OutlinesBackend) -> None:
        self._guide = guide
        self._backend = backend
        self._vocab = backend.vocab
        self._terminated = False

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        v = self._vocab
        if self._terminated:
            v.fill_eos_only(bitmask, row)
            return
        target = bitmask[row]
        assert target.is_contiguous() and bitmask.device.type == "cpu"
        target.zero_()
        self._guide.write_mask_into(target.data_ptr(), target.numel(), 4)
        v.clamp_row_(bitmask, row)
        if self._guide.is_finished():  # the regex may end here: every EOS id is allowed
            v.allow_eos_(bitmask, row)

    def accept_token(self, token_id: int) -> bool:
        if self._terminated:
            return False
        if token_id in self._vocab.eos_ids:
            self._terminated = bool(self._guide.is_finished())
            return self._terminated
        if not self._vocab.is_text_token(token_id):
            return False
        try:
            self._guide.advance(token_id, return_tokens=False)
        except ValueError:  # no transition: the Guide's state is unchanged
            return False
        return True

    def is_terminated(self) -> bool:
        return self._terminated

    def jump_forward_string(self) -> str:
        return ""  # the token-level DFA exposes no character-level forced text cheaply

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        if self._terminated:
            self._terminated = False
            num_tokens -= 1
        if num_tokens:
            self._guide.rollback_state(num_tokens)

    def copy(self) -> "OutlinesMatcher":
        import copy

        other = OutlinesMatcher(copy.deepcopy(self._guide), self._backend)
        other._terminated = self._terminated
        return other
