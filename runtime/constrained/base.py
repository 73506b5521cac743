"""Grammar-constrained decoding: the spec, the backend/matcher contract, the errors.

A request's constraint is a `GrammarSpec` (what the user asked for, in canonical
text). A `GrammarBackend` (xgrammar, llguidance, outlines) compiles a spec once per
distinct spec (`GrammarCompiler` caches by `spec.cache_key`), and makes one
`GrammarMatcher` per request. Every step the engine asks the matcher to fill its row
of a packed bitmask (int32 [B, ceil(V/32)], bit t of row r = token t allowed), applies
the bitmask to the logits (`bitmask.apply_bitmask_`), samples, and feeds the sampled
token back with `accept_token`.

Vocabulary invariants every backend keeps (enforced in `vocab.TokenVocab.clamp_row_`):
  * padded ids (tokenizer size <= t < model vocab size) are never allowed;
  * added/special tokens are never allowed inside grammar text, except the ones a
    grammar names explicitly (structural-tag begin/end strings equal to an added
    token, e.g. Qwen's `<tool_call>`);
  * EOS ids are allowed only where the grammar may end; accepting one terminates.
"""

from __future__ import annotations

import abc
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import xxhash

KINDS = ("json_schema", "json_object", "regex", "ebnf", "lark", "choices", "structural_tag")
WHITESPACE_MODES = ("compact", "bounded")
# "bounded" whitespace: at most this many whitespace characters where JSON allows them.
BOUNDED_WHITESPACE_MAX = 2
REASONING_END = "</think>"


class GrammarError(ValueError):
    """An invalid or unsupported constraint. The message is shown to users (HTTP 400)."""


class InvalidSchemaError(GrammarError):
    """The JSON schema is not valid against its draft's metaschema."""


class UnsupportedSchemaError(GrammarError):
    """A strict JSON schema uses keywords the backend cannot enforce."""


class CompileTimeoutError(GrammarError):
    """The backend stopped a compile that ran past its time limit (outlines does)."""


def canonical_json(value: Any) -> str:
    """Compact JSON text. Key order is preserved on purpose: a schema's property order is
    the order the grammar emits properties in, which matters to generation quality."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _parse_json(text: str | dict | list | bool, what: str) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GrammarError(f"{what} is not valid JSON: {e}") from None


@dataclass(frozen=True)
class GrammarSpec:
    """One constraint, in canonical text so equal constraints share a compiled grammar.

    kind: "json_schema" | "json_object" | "regex" | "ebnf" | "lark" | "choices" | "structural_tag"
    value: JSON schema as compact JSON; regex; EBNF (GBNF syntax, root rule `root`) or Lark
        (rule `start`) text; choices as a JSON list of strings; structural tag as JSON
        `{"structures": [{"begin", "schema", "end"}], "triggers": [...]}`; "" for json_object.
    whitespace: "compact" (no optional whitespace in JSON) or "bounded" (at most
        BOUNDED_WHITESPACE_MAX whitespace characters where JSON allows them), so a weak
        model cannot loop on spaces.
    strict: JSON-schema keywords the backend would ignore raise GrammarError (True) or
        are ignored (False).
    reasoning: the grammar starts only after the model has written REASONING_END
        ("</think>"); before that any non-special text is allowed (EOS is not).
    """

    kind: str
    value: str
    whitespace: str = "compact"
    strict: bool = True
    reasoning: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GrammarError(f"unknown grammar kind {self.kind!r}; known: {list(KINDS)}")
        if self.whitespace not in WHITESPACE_MODES:
            raise GrammarError(f"whitespace must be one of {list(WHITESPACE_MODES)}, got {self.whitespace!r}")
        if not isinstance(self.value, str):
            raise GrammarError(f"grammar value must be text, got {type(self.value).__name__}")
        if not isinstance(self.strict, bool) or not isinstance(self.reasoning, bool):
            raise GrammarError("strict and reasoning must be booleans")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_json_schema(cls, schema: str | dict | bool, **options: Any) -> "GrammarSpec":
        parsed = _parse_json(schema, "json_schema")
        if not isinstance(parsed, (dict, bool)):
            raise GrammarError("json_schema must be a JSON object (or a boolean schema)")
        return cls("json_schema", canonical_json(parsed), **options)

    @classmethod
    def json_object(cls, **options: Any) -> "GrammarSpec":
        return cls("json_object", "", **options)

    @classmethod
    def from_regex(cls, pattern: str, **options: Any) -> "GrammarSpec":
        if not isinstance(pattern, str) or not pattern:
            raise GrammarError("regex must be a non-empty string")
        return cls("regex", pattern, **options)

    @classmethod
    def from_ebnf(cls, text: str, **options: Any) -> "GrammarSpec":
        """EBNF (GBNF syntax) text, or the name of a grammar shipped in `grammars/`
        ("json", "arithmetic", "tool_call", ... or "name.lark" / "name.ebnf")."""
        from runtime.constrained import grammar_files

        if not isinstance(text, str) or not text.strip():
            raise GrammarError("ebnf must be a non-empty string")
        if grammar_files.is_name(text):
            kind, body = grammar_files.load_with_kind(text)
            return cls(kind, body, **options)
        return cls("ebnf", text, **options)

    @classmethod
    def from_lark(cls, text: str, **options: Any) -> "GrammarSpec":
        if not isinstance(text, str) or not text.strip():
            raise GrammarError("lark grammar must be a non-empty string")
        return cls("lark", text, **options)

    @classmethod
    def from_choices(cls, choices: list[str], **options: Any) -> "GrammarSpec":
        if (not isinstance(choices, (list, tuple)) or not choices
                or not all(isinstance(c, str) and c for c in choices)):
            raise GrammarError("choices must be a non-empty list of non-empty strings")
        return cls("choices", canonical_json(list(choices)), **options)

    @classmethod
    def from_structural_tag(cls, tag: str | dict, **options: Any) -> "GrammarSpec":
        from runtime.constrained.structural_tag import parse_structural_tag

        return cls("structural_tag", canonical_json(parse_structural_tag(tag)), **options)

    @staticmethod
    def from_sampling_params(sp: Any) -> "GrammarSpec | None":
        """The spec for a `runtime.core.SamplingParams` (None when unconstrained).
        Optional attributes `grammar_whitespace`, `grammar_strict`, `grammar_reasoning`
        override the defaults when present."""
        options: dict[str, Any] = {}
        for attr, key in (("grammar_whitespace", "whitespace"), ("grammar_strict", "strict"),
                          ("grammar_reasoning", "reasoning")):
            if getattr(sp, attr, None) is not None:
                options[key] = getattr(sp, attr)
        if sp.json_schema is not None:
            return GrammarSpec.from_json_schema(sp.json_schema, **options)
        if sp.regex is not None:
            return GrammarSpec.from_regex(sp.regex, **options)
        if sp.ebnf is not None:
            return GrammarSpec.from_ebnf(sp.ebnf, **options)
        if getattr(sp, "structural_tag", None) is not None:
            return GrammarSpec.from_structural_tag(sp.structural_tag, **options)
        return None

    # ------------------------------------------------------------------ helpers
    def cache_key(self, backend: str) -> int:
        """xxh3_64 of (backend, kind, value, options): the compile-cache key."""
        h = xxhash.xxh3_64()
        for part in (backend, self.kind, self.whitespace, str(self.strict), str(self.reasoning)):
            h.update(part.encode())
            h.update(b"\x00")
        h.update(self.value.encode("utf-8", "surrogatepass"))
        return h.intdigest()

    def parsed_value(self) -> Any:
        """The JSON value of json_schema / choices / structural_tag specs."""
        return json.loads(self.value) if self.value else None

    def choice_regex(self) -> str:
        """A regex matching exactly one of the choices (kind "choices")."""
        from runtime.constrained.regex_util import escape_literal

        return "(" + "|".join(escape_literal(c) for c in self.parsed_value()) + ")"


def _clean(error: Exception, limit: int = 500) -> str:
    """A native library's message without its log prefix ("[12:00:01] /path/file.cc:42: ")."""
    text = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", str(error).strip()).split("\n")[0]
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class CompiledGrammar:
    """What `GrammarBackend.compile` returns: opaque to the engine, immutable, shareable."""

    spec: GrammarSpec
    handle: Any  # the backend's compiled object
    # added-token ids whose text the grammar spells out (e.g. a structural tag's
    # "<tool_call>"): the vocabulary clamp lets them through; other added tokens stay masked.
    allowed_added_ids: frozenset[int] = field(default_factory=frozenset)
    warnings: tuple[str, ...] = ()


class GrammarMatcher(abc.ABC):
    """Per-request matching state. Not thread-safe; one per request (or per `copy`).

    Contract:
      * `fill_bitmask(bitmask, row)` writes row `row` of int32 [B, ceil(V/32)] (every
        word of the row; the other rows are untouched). It does not change state.
      * `accept_token(t)` returns False and leaves the state unchanged when t is not
        allowed; accepting an EOS id where the grammar may end terminates the matcher.
      * after termination `fill_bitmask` allows only the EOS ids and every
        `accept_token` returns False.
    """

    @abc.abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None: ...

    @abc.abstractmethod
    def accept_token(self, token_id: int) -> bool: ...

    @abc.abstractmethod
    def is_terminated(self) -> bool: ...

    @abc.abstractmethod
    def jump_forward_string(self) -> str:
        """Text the grammar forces from here ('' if none). Does not change state; the
        engine tokenizes it, then calls accept_token for each of its tokens."""

    @abc.abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last num_tokens accepted tokens (termination included)."""

    def copy(self) -> "GrammarMatcher":
        raise NotImplementedError(f"{type(self).__name__} cannot be copied")

    def error(self) -> str | None:
        """Why the matcher failed, when it hit an internal limit (None: no failure)."""
        return None


class GrammarBackend(abc.ABC):
    """Compiles specs and makes matchers for one tokenizer / model vocabulary.

    `vocab_size` is the model's (padded) vocabulary size, i.e. the logits width V.
    `compile` is thread-safe (the compiler pool calls it from worker threads).
    """

    name: ClassVar[str]
    supported_kinds: ClassVar[frozenset[str]]
    # JSON-schema features it enforces (see schema_check.schema_features); others are
    # GrammarErrors for strict specs
    supported_features: ClassVar[frozenset[str]] = frozenset()
    # seconds after which a backend that can stop a compile (outlines) stops it; None: never
    compile_timeout_s: float | None = None

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        from runtime.constrained.vocab import TokenVocab

        self.vocab = TokenVocab.get(tokenizer, vocab_size, eos_token_ids)
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        if spec.kind not in self.supported_kinds:
            raise GrammarError(f"grammar backend {self.name} does not support kind {spec.kind!r} "
                               f"(supported: {sorted(self.supported_kinds)})")
        try:
            compiled = self._compile(spec)
        except GrammarError:
            raise
        except Exception as e:  # backend-specific exception types -> one user-facing error
            raise GrammarError(f"{self.name} could not compile the {spec.kind} grammar: {_clean(e)}") from e
        # added tokens whose text the grammar spells out (e.g. "<tool_call>") may be produced
        named = self.vocab.added_ids_named_in(spec.value)
        if named - compiled.allowed_added_ids:
            compiled.allowed_added_ids = compiled.allowed_added_ids | named
        return compiled

    def new_matcher(self, compiled: CompiledGrammar) -> GrammarMatcher:
        matcher = self._new_matcher(compiled)
        if compiled.spec.reasoning:
            from runtime.constrained.reasoning import ReasoningMatcher

            matcher = ReasoningMatcher(matcher, self.vocab)
        return matcher

    @abc.abstractmethod
    def _compile(self, spec: GrammarSpec) -> CompiledGrammar: ...

    @abc.abstractmethod
    def _new_matcher(self, compiled: CompiledGrammar) -> GrammarMatcher: ...
