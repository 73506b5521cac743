"""llguidance backend: Earley parser over a lazy lexer, masks computed on the fly (no
per-grammar precomputation, so compiling is ~1 ms and masks cost tens of µs).

Vocabulary: llguidance reads the tokenizer itself (`llguidance.hf.from_tokenizer`),
with n_vocab = the model's padded vocab size and our EOS ids. It represents added
tokens as special tokens that never match grammar text; a Lark grammar names one as
`<[id]>`, which is how structural tags allow Qwen's `<tool_call>` token.

Compile = build the grammar text, validate it against the tokenizer, and construct one
prototype `LLMatcher`; each request gets `prototype.deep_copy()` (shares the grammar).
Whitespace: compact = `whitespace_flexible: false` with "," / ":" separators; bounded =
flexible with a `[ \\t\\n\\r]{0,N}` pattern. Non-strict specs set `lenient: true`;
strict ones rely on llguidance's own "Unimplemented keys" errors plus our feature check.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance as llg
import llguidance.hf
import numpy as np
import torch
from llguidance.gbnf_to_lark import any_to_lark

from runtime.constrained.base import (
    BOUNDED_WHITESPACE_MAX,
    CompiledGrammar,
    GrammarBackend,
    GrammarError,
    GrammarMatcher,
    GrammarSpec,
)
from runtime.constrained.lark_util import literal, name_added_tokens
from runtime.constrained.regex_util import ascii_classes
from runtime.constrained.schema_check import check_schema, close_objects
from runtime.constrained.structural_tag import trigger_of

# Features llguidance 1.x enforces (probed by tests/unit/test_constrained_keywords.py).
# It rejects most others itself ("Unimplemented keys"), but silently accepts overlapping
# oneOf (as anyOf), propertyNames, and formats it does not know.
SUPPORTED_FEATURES = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items", "prefixItems",
    "items:array", "additionalItems", "minItems", "maxItems", "anyOf", "oneOf", "allOf", "$ref", "pattern",
    "minLength", "maxLength",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "multipleOf:number",
    "multipleOf+range", "pattern+length", "format+pattern", "format+length", "patternProperties", "minProperties",
    "maxProperties",
    "anyOf+siblings", "oneOf+siblings", "$ref+siblings", "untyped-constraint", "enum+constraint", "enum+type",
    "format:date", "format:time", "format:date-time", "format:duration", "format:email",
    "format:ipv4", "format:ipv6", "format:hostname", "format:uuid", "format:uri",
})


# llguidance's fuel for building a grammar's lexer (default 1,000,000). A lexer past it
# (`(a{1000}){1000}`) fails at its first mask, after ~1.3 s at the default on a 2-core
# machine and ~0.2 s at this value; none of the 2,216 maskbench schemas in shared/data
# needs more (their first masks compile the same at both).
LEXER_BUILD_FUEL = 200_000


class LLGuidanceBackend(GrammarBackend):
    name = "llguidance"
    supported_kinds = frozenset({"json_schema", "json_object", "regex", "ebnf", "lark", "choices",
                                 "structural_tag"})
    supported_features = SUPPORTED_FEATURES

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        super().__init__(tokenizer, vocab_size, eos_token_ids)
        self.ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size,
                                                         eos_token=list(self.vocab.eos_ids))
        self.limits = llg.LLParserLimits(initial_lexer_fuel=LEXER_BUILD_FUEL)

    # ------------------------------------------------------------------ grammar text
    def _json_options(self, spec: GrammarSpec) -> dict[str, Any]:
        # coerce_one_of: compile oneOf as anyOf. Exact here: strict specs with oneOf
        # branches that are not provably disjoint were refused by check_schema already.
        opts: dict[str, Any] = {"lenient": not spec.strict, "coerce_one_of": True}
        if spec.whitespace == "compact":
            opts.update(whitespace_flexible=False, item_separator=",", key_separator=":")
        else:
            opts.update(whitespace_flexible=True,
                        whitespace_pattern=rf"[\x20\x0A\x0D\x09]{{0,{BOUNDED_WHITESPACE_MAX}}}")
        return opts

    def _schema_with_options(self, schema: Any, spec: GrammarSpec) -> Any:
        check_schema(schema, self.name, self.supported_features, spec.strict)
        if isinstance(schema, bool):
            schema = {} if schema else {"not": {}}
        return {**close_objects(schema), "x-guidance": self._json_options(spec)}

    def _grammar_text(self, spec: GrammarSpec) -> str:
        kind = spec.kind
        if kind == "json_schema":
            return llg.LLMatcher.grammar_from_json_schema(self._schema_with_options(spec.parsed_value(), spec))
        if kind == "json_object":
            return llg.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=self._json_options(spec))
        if kind == "regex":
            return llg.LLMatcher.grammar_from_regex(ascii_classes(spec.value))
        if kind in ("ebnf", "lark"):
            lark = spec.value
            if kind == "ebnf":
                try:
                    lark = any_to_lark(spec.value)
                except Exception as e:
                    raise GrammarError(f"invalid EBNF grammar: {e}") from None
            return llg.LLMatcher.grammar_from_lark(name_added_tokens(lark, self._nameable_tokens()))
        if kind == "choices":
            lark = "start: " + " | ".join(literal(c, self._nameable_tokens()) for c in spec.parsed_value())
            return llg.LLMatcher.grammar_from_lark(lark)
        if kind == "structural_tag":
            tag = spec.parsed_value()
            return llg.LLMatcher.grammar_from_lark(self._structural_tag_lark(tag, spec))
        raise GrammarError(f"unsupported kind {kind}")  # pragma: no cover

    def _nameable_tokens(self) -> dict[str, int]:
        v = self.vocab
        return {text: i for text, i in v.added_by_text.items() if i not in v.eos_ids}

    def _structural_tag_lark(self, tag: dict[str, Any], spec: GrammarSpec) -> str:
        """start: free text, then any number of (tag, free text). A trigger is a lazy lexeme
        (text up to and including the first trigger occurrence); a trigger that is an added
        token may also come as that token. A begin/end that is an added token's text may be
        the token or the text."""
        added = self._nameable_tokens()

        def lit(text: str) -> str:
            return literal(text, added) if text else ""

        lines = ["%llguidance {}", "start: tagged* TEXT", "TEXT: /(.|\\n)*/"]
        triggers = sorted(set(trigger_of(s["begin"], tag["triggers"]) for s in tag["structures"]))
        for i, trig in enumerate(triggers):
            alts = [f"trigger_{i}_text"] + ([f"TEXT <[{added[trig]}]>"] if trig in added else [])
            lines.append(f"trigger_{i}: " + " | ".join(alts))
            lines.append(f'trigger_{i}_text[lazy]: TEXT "{_esc(trig)}"')
        names = []
        for j, s in enumerate(tag["structures"]):
            i = triggers.index(trigger_of(s["begin"], tag["triggers"]))
            rest = s["begin"][len(triggers[i]):]
            schema = json.dumps(self._schema_with_options(s["schema"], spec))
            lines.append(f"tag_{j}: trigger_{i} {lit(rest)} %json {schema} {lit(s['end'])}")
            names.append(f"tag_{j}")
        lines.append("tagged: " + " | ".join(names))
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ compile
    def _compile(self, spec: GrammarSpec) -> CompiledGrammar:
        grammar = self._grammar_text(spec)
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self.ll_tokenizer,
                                                                           limits=self.limits)
        if is_error:
            raise GrammarError(f"llguidance rejected the {spec.kind} grammar: {_short(messages[0])}")
        prototype = llg.LLMatcher(self.ll_tokenizer, grammar, log_level=0, limits=self.limits)
        if prototype.is_error():
            raise GrammarError(f"llguidance rejected the {spec.kind} grammar: {_short(prototype.get_error())}")
        self._probe_first_token(prototype, spec)
        return CompiledGrammar(spec, prototype, warnings=tuple(messages))

    def _probe_first_token(self, prototype: llg.LLMatcher, spec: GrammarSpec) -> None:
        """A grammar past llguidance's size limits (a lexer over `(a{1000}){1000}`, an
        Earley row of 5,000 alternatives) compiles and fails at its first token. Try the
        first token the mask allows on a copy, so such a grammar is refused at compile."""
        probe = prototype.deep_copy()
        words = np.frombuffer(probe.compute_bitmask(), dtype=np.uint32)
        for word in np.flatnonzero(words)[:1]:
            token = int(word) * 32 + (int(words[word]) & -int(words[word])).bit_length() - 1
            if token not in self.vocab.eos_ids and not probe.try_consume_tokens([token]) and probe.is_error():
                raise GrammarError(f"the {spec.kind} grammar is too large for llguidance "
                                   f"({_short(probe.get_error(), 200)}): use fewer or smaller bounded "
                                   f"repetitions and alternatives")

    def _new_matcher(self, compiled: CompiledGrammar) -> GrammarMatcher:
        return LLGuidanceMatcher(compiled.handle.deep_copy(), self, compiled.allowed_added_ids)


def _esc(text: str) -> str:
    """Body of a Lark string literal (JSON escaping)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _short(message: str, limit: int = 500) -> str:
    message = message.split("<state>")[0].strip()
    return message if len(message) <= limit else message[:limit] + "..."


class LLGuidanceMatcher(GrammarMatcher):
    """EOS never reaches llguidance (whether it records a consumed EOS depends on its
    stop state, which would make rollback counts ambiguous): accepting EOS where the
    grammar is accepting sets our own `terminated` flag; rollback undoes it first."""

    def __init__(self, matcher: llg.LLMatcher, backend: LLGuidanceBackend, allowed_added: frozenset[int]):
        self._m = matcher
        self._backend = backend
        self._vocab = backend.vocab
        self._allowed_added = allowed_added
        self._terminated = False

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if self._terminated or self._m.is_error():
            self._vocab.fill_eos_only(bitmask, row)  # an errored matcher can only end
            return
        target = bitmask[row]
        assert target.is_contiguous() and bitmask.device.type == "cpu"
        self._m.unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * 4)
        self._vocab.clamp_row_(bitmask, row, self._allowed_added)

    def accept_token(self, token_id: int) -> bool:
        v = self._vocab
        if self._terminated or self._m.is_error():
            return False
        if token_id in v.eos_ids:
            self._terminated = bool(self._m.is_accepting())
            return self._terminated
        if not (v.is_text_token(token_id) or token_id in self._allowed_added):
            return False
        # try_consume_tokens leaves the state unchanged on failure (consume_token would
        # put the matcher into its error state)
        return self._m.try_consume_tokens([token_id]) == 1

    def is_terminated(self) -> bool:
        return self._terminated

    def jump_forward_string(self) -> str:
        if self._terminated or self._m.is_error():
            return ""
        forced = self._m.compute_ff_bytes().split(b"\xff")[0]  # stop at a special token
        return forced[: _utf8_cut(forced)].decode("utf-8", errors="replace")

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > 0 and self._terminated:
            self._terminated = False
            num_tokens -= 1
        if num_tokens > 0 and not self._m.rollback(num_tokens):
            raise ValueError(f"llguidance cannot roll back {num_tokens} tokens: {self._m.get_error()}")

    def error(self) -> str | None:
        return _short(self._m.get_error(), 200) if self._m.is_error() else None

    def copy(self) -> "LLGuidanceMatcher":
        other = LLGuidanceMatcher(self._m.deep_copy(), self._backend, self._allowed_added)
        other._terminated = self._terminated
        return other


def _utf8_cut(data: bytes) -> int:
    """Length of the longest prefix of `data` that ends on a UTF-8 character boundary."""
    i = len(data)
    while i > 0 and (data[i - 1] & 0xC0) == 0x80:
        i -= 1
    if i > 0 and data[i - 1] >= 0xC0:  # a lead byte whose character is incomplete
        need = 2 if data[i - 1] < 0xE0 else 3 if data[i - 1] < 0xF0 else 4
        if len(data) - (i - 1) < need:
            return i - 1
    return len(data)
