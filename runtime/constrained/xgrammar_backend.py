"""xgrammar backend: Earley parser with per-state token masks precomputed at compile time.

Vocabulary: xgrammar gets our exact token bytes (`VocabType.RAW`), the model's padded
vocab size and our EOS ids as its stop tokens. Added tokens flagged `special` by the
tokenizer (`<|im_start|>`, ...) are given empty bytes, which xgrammar treats as never
allowed; textual added tokens (`<tool_call>`, `</tool_call>`) keep their text so a
structural tag can match them; the vocabulary clamp masks them everywhere else.

Whitespace: compact = `any_whitespace=False, separators=(",", ":")`; bounded =
`any_whitespace=True, max_whitespace_cnt=BOUNDED_WHITESPACE_MAX`.
xgrammar's `strict_mode` (on) generates only the properties a schema names (objects
are closed, as on the other backends). In compact mode xgrammar still writes ", "
between the items of free-form nested values; `_compact_any` rewrites those rules.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
import xgrammar as xgr

from runtime.constrained.base import (
    BOUNDED_WHITESPACE_MAX,
    CompiledGrammar,
    GrammarBackend,
    GrammarError,
    GrammarMatcher,
    GrammarSpec,
)
from runtime.constrained.regex_util import ascii_classes
from runtime.constrained.schema_check import check_schema, has_lookaround

# Features (see schema_check) that xgrammar 0.2.x enforces; probed by
# tests/unit/test_constrained_keywords.py. Silently ignored by xgrammar, hence
# GrammarErrors when strict: allOf, overlapping oneOf, not, if/then/else, uniqueItems,
# contains, dependentRequired, formats it does not know, multipleOf on numbers or next
# to a range, lookaround in patterns, a format next to a pattern (one of them is dropped).
# min/maxLength are refused too: xgrammar 0.2's
# length-bounded string rule admits raw control characters (a tab inside the quotes is
# not JSON), found by `radixflow bench grammar --generate`.
SUPPORTED_FEATURES = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "anyOf", "oneOf", "$ref", "pattern", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "patternProperties",
    "propertyNames", "minProperties", "maxProperties",
    "format:date", "format:time", "format:date-time", "format:duration", "format:email",
    "format:ipv4", "format:ipv6", "format:hostname", "format:uuid", "format:uri",
    "format:uri-reference", "format:uri-template", "format:json-pointer",
    "format:relative-json-pointer",
})


def _compact_any(grammar: xgr.Grammar) -> xgr.Grammar:
    """xgrammar's rules for schema-less values ("basic_array_items", ...) use ", " even
    with separators (",", ":"); rewrite them to "," so compact output is compact."""
    text = str(grammar)
    fixed = re.sub(r'^(basic_array_items|basic_object_properties) ::= \(\(", "', r'\1 ::= (("," ', text, flags=re.M)
    return grammar if fixed == text else xgr.Grammar.from_ebnf(fixed)


class XGrammarBackend(GrammarBackend):
    name = "xgrammar"
    supported_kinds = frozenset({"json_schema", "json_object", "regex", "ebnf", "lark", "choices",
                                 "structural_tag"})
    supported_features = SUPPORTED_FEATURES

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int],
                 compile_threads: int | None = None) -> None:
        super().__init__(tokenizer, vocab_size, eos_token_ids)
        v = self.vocab
        special = {i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", True)}
        encoded = [b"" if (i in special or i in v.eos_ids) else b for i, b in enumerate(v.token_bytes)]
        self.tokenizer_info = xgr.TokenizerInfo(encoded, xgr.VocabType.RAW, vocab_size=vocab_size,
                                                stop_token_ids=list(v.eos_ids))
        threads = compile_threads or min(8, os.cpu_count() or 1)
        # our GrammarCompiler caches; xgrammar's own cache would only duplicate memory
        self._compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=threads, cache_enabled=False)

    # ------------------------------------------------------------------ compile
    def _json_options(self, spec: GrammarSpec) -> dict[str, Any]:
        if spec.whitespace == "compact":
            return {"any_whitespace": False, "separators": (",", ":")}
        return {"any_whitespace": True, "max_whitespace_cnt": BOUNDED_WHITESPACE_MAX}

    def _schema_grammar(self, schema: Any, spec: GrammarSpec) -> xgr.Grammar:
        check_schema(schema, self.name, self.supported_features, spec.strict)
        grammar = xgr.Grammar.from_json_schema(json.dumps(schema), **self._json_options(spec))
        return _compact_any(grammar) if spec.whitespace == "compact" else grammar

    def _compile(self, spec: GrammarSpec) -> CompiledGrammar:
        kind = spec.kind
        if kind == "json_schema":
            grammar = self._schema_grammar(spec.parsed_value(), spec)
        elif kind == "json_object":
            grammar = xgr.Grammar.from_json_schema('{"type":"object"}', **self._json_options(spec))
            grammar = _compact_any(grammar) if spec.whitespace == "compact" else grammar
        elif kind == "regex" and spec.strict and has_lookaround(spec.value):
            raise GrammarError("the xgrammar backend cannot enforce lookaround assertions ((?=, (?!, (?<=, (?<!) "
                               "in a regex; it would ignore them (set strict=False to accept that)")
        elif kind in ("regex", "choices"):
            grammar = xgr.Grammar.from_regex(ascii_classes(spec.value) if kind == "regex" else spec.choice_regex())
        elif kind == "ebnf":
            grammar = xgr.Grammar.from_ebnf(spec.value)
        elif kind == "lark":
            grammar = xgr.Grammar.from_lark(spec.value)
        elif kind == "structural_tag":
            tag = spec.parsed_value()
            tags = [{"type": "tag", "begin": s["begin"], "end": s["end"],
                     "content": {"type": "grammar", "grammar": str(self._schema_grammar(s["schema"], spec))}}
                    for s in tag["structures"]]
            grammar = xgr.Grammar.from_structural_tag(json.dumps({
                "type": "structural_tag",
                "format": {"type": "triggered_tags", "triggers": tag["triggers"], "tags": tags}}))
        else:  # pragma: no cover - supported_kinds guards this
            raise GrammarError(f"unsupported kind {kind}")
        return CompiledGrammar(spec, self._compiler.compile_grammar(grammar))

    def _new_matcher(self, compiled: CompiledGrammar) -> GrammarMatcher:
        return XGrammarMatcher(xgr.GrammarMatcher(compiled.handle), self, compiled.allowed_added_ids)


class XGrammarMatcher(GrammarMatcher):
    def __init__(self, matcher: xgr.GrammarMatcher, backend: XGrammarBackend, allowed_added: frozenset[int]):
        self._m = matcher
        self._backend = backend
        self._vocab = backend.vocab
        self._allowed_added = allowed_added

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if self._m.is_terminated():
            self._vocab.fill_eos_only(bitmask, row)
            return
        self._m.fill_next_token_bitmask(bitmask, row)
        self._vocab.clamp_row_(bitmask, row, self._allowed_added)

    def accept_token(self, token_id: int) -> bool:
        v = self._vocab
        if not (v.is_text_token(token_id) or token_id in v.eos_ids or token_id in self._allowed_added):
            return False
        return bool(self._m.accept_token(token_id))

    def is_terminated(self) -> bool:
        return bool(self._m.is_terminated())

    def jump_forward_string(self) -> str:
        if self._m.is_terminated():
            return ""
        return self._m.find_jump_forward_string()

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > 0:
            self._m.rollback(num_tokens)

    def copy(self) -> "XGrammarMatcher":
        return XGrammarMatcher(self._m.fork(), self._backend, self._allowed_added)
