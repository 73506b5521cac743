"""Shared vocabulary of the runtime: sampling parameters, requests, outputs.

Plain dataclasses with no torch ops, so every layer (engine, server, frontend) can
import them cheaply and they cross process boundaries by pickling.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


class FinishKind(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


class AbortCause(str, enum.Enum):
    """Why an abort ended a request; `status` is the HTTP status a server answers with."""

    CANCELLED = "cancelled"  # the caller aborted it (disconnect, abort(rid)): nobody waits for an answer
    INVALID_REQUEST = "invalid_request"  # it cannot run as given (a grammar too large, a prompt too long)
    ENGINE_GONE = "engine_gone"  # the engine process stopped or was shut down
    INTERNAL = "internal"  # a bug in the engine (a step raised)

    @property
    def status(self) -> int:
        return {"cancelled": 499, "invalid_request": 400, "engine_gone": 503, "internal": 500}[self.value]


@dataclass
class FinishReason:
    kind: FinishKind
    matched: int | str | None = None  # the stop token id or stop string that ended it
    message: str | None = None  # set for aborts
    cause: AbortCause | None = None  # set for aborts

    @classmethod
    def abort(cls, cause: AbortCause, message: str) -> "FinishReason":
        return cls(FinishKind.ABORT, message=message, cause=cause)

    def to_dict(self) -> dict[str, Any]:
        """SGLang's shape: aborts also carry "message" and "status_code"."""
        out: dict[str, Any] = {"type": self.kind.value, "matched": self.matched}
        if self.message is not None:
            out["message"] = self.message
        if self.cause is not None:
            out["status_code"] = self.cause.status
        return out


class SamplingParamError(ValueError):
    """A sampling parameter out of its range; `name` is the field (SGLang's name)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


# The OpenAI API's (and SGLang frontend's) names for SamplingParams fields named otherwise.
OPENAI_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "sampling_seed": "seed"}
MAX_TEMPERATURE = 2.0  # OpenAI's documented bound, applied to every API
CONSTRAINT_FIELDS = ("json_schema", "regex", "ebnf", "structural_tag")  # the SamplingParams that constrain


@dataclass
class SamplingParams:
    """Per-request sampling knobs, named as in SGLang. `validate()` raises ValueError."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0) disables top-k
    min_p: float = 0.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None  # stop where the output matches one (`regex` module syntax)
    ignore_eos: bool = False
    min_new_tokens: int = 0
    n: int = 1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    json_schema: str | dict | None = None
    regex: str | None = None
    ebnf: str | None = None
    structural_tag: str | dict | None = None  # free text with triggered JSON segments (tool calls)
    grammar_reasoning: bool = False  # the constraint starts after the model's "</think>" (reasoning models)
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    sampling_seed: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "SamplingParams":
        """Build from a user dict; unknown keys are an error that lists the known ones."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown sampling parameter(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**d)

    @property
    def stop_strs(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def stop_regexes(self) -> list:
        """The compiled `stop_regex` patterns (the `regex` module: partial matches tell
        how much output tail might still become a match)."""
        if not self.stop_regex:
            return []
        import regex

        return [regex.compile(p) for p in ([self.stop_regex] if isinstance(self.stop_regex, str) else self.stop_regex)]

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def validate(self, vocab_size: int | None = None) -> None:
        def check(cond: bool, name: str, rule: str) -> None:
            if not cond:
                raise SamplingParamError(name, f"{name} must be {rule}, got {getattr(self, name)!r}")

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0,
              "max_new_tokens", "an integer >= 0")
        check(number(self.temperature) and 0.0 <= self.temperature <= MAX_TEMPERATURE,
              "temperature", f"in [0, {MAX_TEMPERATURE:g}]")
        check(number(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "in (0, 1]")
        check(isinstance(self.top_k, int) and (self.top_k >= 1 or self.top_k in (-1, 0)),
              "top_k", "a positive integer, or -1/0 to disable")
        check(number(self.min_p) and 0.0 <= self.min_p <= 1.0, "min_p", "in [0, 1]")
        check(isinstance(self.min_new_tokens, int) and self.min_new_tokens >= 0,
              "min_new_tokens", "an integer >= 0")
        check(isinstance(self.n, int) and 1 <= self.n <= 128, "n", "an integer in [1, 128]")
        check(number(self.frequency_penalty) and -2.0 <= self.frequency_penalty <= 2.0,
              "frequency_penalty", "in [-2, 2]")
        check(number(self.presence_penalty) and -2.0 <= self.presence_penalty <= 2.0,
              "presence_penalty", "in [-2, 2]")
        check(number(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 10.0,
              "repetition_penalty", "in (0, 10]")
        check(isinstance(self.grammar_reasoning, bool), "grammar_reasoning", "a boolean")
        check(self.sampling_seed is None or isinstance(self.sampling_seed, int),
              "sampling_seed", "an integer or None")
        check(self.stop is None or isinstance(self.stop, str)
              or (isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop)),
              "stop", "a string or a list of non-empty strings")
        check(self.stop_regex is None or isinstance(self.stop_regex, str)
              or (isinstance(self.stop_regex, list) and all(isinstance(s, str) and s for s in self.stop_regex)),
              "stop_regex", "a string or a list of non-empty strings")
        try:
            self.stop_regexes
        except Exception as e:  # regex.error
            raise SamplingParamError("stop_regex", f"stop_regex is not a valid regular expression: {e}") from None
        if self.stop_token_ids is not None:
            check(all(isinstance(t, int) and t >= 0 and (vocab_size is None or t < vocab_size)
                      for t in self.stop_token_ids),
                  "stop_token_ids", f"token ids in [0, {vocab_size})")
        num_constraints = sum(getattr(self, name) is not None for name in CONSTRAINT_FIELDS)
        if num_constraints > 1:
            raise SamplingParamError("json_schema", "only one of json_schema, regex, ebnf, structural_tag may be set")


class EngineDeadError(RuntimeError):
    """The engine process is gone (killed, crashed, or shut down): nothing can run."""


def new_rid() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class RequestOptions:
    """A request's options besides its prompt and sampling parameters: what it returns
    and which cache namespace it uses. One object from `Engine.generate` (its keyword
    arguments of these names) through GenerateRequest into the engine's Req."""

    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no prompt logprobs; k: prompt logprobs from position k
    top_logprobs_num: int = 0  # top alternatives per logprob position (0-20)
    return_text_in_logprobs: bool = False  # token texts next to logprobs (the front end detokenizes)
    stream: bool = False  # the engine sends every step's tokens, not only the end
    cache_salt: str | None = None  # prefix-cache namespace: requests share KV only within one salt
    # a routing hint (OpenAI `user`, the X-Session-ID header): replicas behind a cache-aware
    # router keep one session on one replica (runtime/server/ray_serve.py); the engine ignores it
    session_id: str | None = None

    def validate(self, prompt_len: int) -> None:
        if not isinstance(self.logprob_start_len, int) or not -1 <= self.logprob_start_len < prompt_len:
            raise ValueError(f"logprob_start_len must be -1 or in [0, {prompt_len}), got {self.logprob_start_len!r}")
        if not isinstance(self.top_logprobs_num, int) or not 0 <= self.top_logprobs_num <= 20:
            raise ValueError(f"top_logprobs_num must be in [0, 20], got {self.top_logprobs_num!r}")

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.return_logprob and self.logprob_start_len >= 0


@dataclass
class GenerateRequest:
    """One generation request as it crosses into the engine process (already tokenized)."""

    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    options: RequestOptions = field(default_factory=RequestOptions)
    arrival_time: float = field(default_factory=time.time)


@dataclass
class AbortRequest:
    rid: str


@dataclass
class TokenOut:
    """What the engine emits for one request after a step (or at its end).

    `new_token_ids` are the tokens appended since the last TokenOut for this rid; the
    front end (`runtime.Engine`) detokenizes them and matches stop strings.
    """

    rid: str
    new_token_ids: list[int]
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # logprobs for new_token_ids: list of (logprob, token_id), and top alternatives
    output_token_logprobs: list[tuple[float, int]] | None = None
    output_top_logprobs: list[list[tuple[float, int]]] | None = None
    # prompt logprobs (sent once, with the first TokenOut)
    input_token_logprobs: list[tuple[float | None, int]] | None = None
    input_top_logprobs: list[list[tuple[float, int]] | None] | None = None


@dataclass(eq=False)  # identity: list.remove / `in` must not compare every field
class Req:
    """A request's state inside the engine process.

    Invariants: the KV of fill_ids[:kv_len] is in the pool, at the slots recorded in
    row `table_row` of the ReqToTokenTable; the first `cached_len` of those slots
    belong to the prefix cache (locked via `last_node`), the rest to this request.
    A running (decoding) request has kv_len == len(fill_ids) - 1.
    """

    rid: str
    origin_input_ids: list[int]
    sampling_params: SamplingParams
    options: RequestOptions = field(default_factory=RequestOptions)
    arrival_time: float = field(default_factory=time.time)

    output_ids: list[int] = field(default_factory=list)
    table_row: int | None = None
    kv_len: int = 0
    cached_len: int = 0  # leading slots owned by the prefix cache
    last_node: Any = None
    prefix_slots: Any = None  # matched cache slots, between prefix match and admission
    cached_tokens: int = 0  # prompt tokens served from the cache (reported to the user)
    finish_reason: FinishReason | None = None
    num_retractions: int = 0
    grammar: Any = None  # GrammarMatcher while the output is constrained
    grammar_submitted_at: float = 0.0
    spec: Any = None  # SpecState while speculative decoding drafts for this request
    # output bookkeeping: how many output ids were already sent in a TokenOut
    num_sent: int = 0
    output_token_logprobs: list[tuple[float, int]] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    input_token_logprobs: list[tuple[float | None, int]] | None = None
    input_top_logprobs: list | None = None
    input_logprobs_sent: bool = False

    @property
    def fill_ids(self) -> list[int]:
        return self.origin_input_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.origin_input_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def extra_key(self) -> str | None:
        """The prefix-cache namespace (the request's cache_salt)."""
        return self.options.cache_salt


# ---- control messages: operations other than generation, one dataclass each --------
# The engine process dispatches them by type (`EngineCore.CONTROL_HANDLERS`) and answers
# each with a ControlReply carrying the same request_id.
@dataclass
class Control:
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class GetInfo(Control):
    """-> the engine's info dict (model, pool, scheduler and cache counters)."""


@dataclass
class FlushCache(Control):
    """-> refused while requests run; otherwise the prefix cache is emptied."""


@dataclass
class LookupPageHashes(Control):
    """-> {"pages", "tokens", "page_size"}: how much of a prefix (chained page hashes) is cached."""

    hashes: list[int] = field(default_factory=list)


@dataclass
class GetPrefixDigest(Control):
    """-> {"hashes", "page_size", "block_pages"}: the chained page hash of every cached prefix whose
    length is a multiple of block_pages pages (what a cache-aware router matches a prompt against)."""

    block_pages: int = 1


@dataclass
class GetStepTimes(Control):
    """-> per-step timings (recorded when EngineConfig.extra["record_step_times"])."""


@dataclass
class ResetStepTimes(Control):
    pass


@dataclass
class CheckLeaks(Control):
    """-> refused unless every KV slot is free or held by the prefix cache (tests)."""


@dataclass
class Shutdown(Control):
    """The loop answers and exits."""


@dataclass
class InjectFault(Control):
    """Tests only (honoured when RADIXFLOW_TEST_HOOKS=1): "crash_engine" | "fail_next_step"."""

    fault: str = ""


@dataclass
class ControlReply:
    request_id: str
    ok: bool
    result: Any = None
    error: str | None = None


@dataclass
class EngineReady:
    info: dict  # model/pool facts the front end validates against


@dataclass
class EngineFailed:
    error: str
