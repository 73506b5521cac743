"""The frontend's expressions: what `s += ...` appends. Plain dataclasses; `+` builds a
`Concat`. The interpreter (`state.py`) runs them through a dispatch table by type.

`GenParams` is the one list of generation fields (SGLang's frontend names); it merges
with overrides (program defaults < `run(**kw)` < `gen(...)`) and maps to engine
sampling parameters (`to_engine`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from runtime.core import OPENAI_NAMES

# the regexes of SGLang's `sglang.lang.ir` (gen_int/gen_string and gen(dtype=...))
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""
DTYPE_REGEX = {int: REGEX_INT, float: REGEX_FLOAT, bool: REGEX_BOOL, str: REGEX_STR,
               "int": REGEX_INT, "float": REGEX_FLOAT, "bool": REGEX_BOOL, "str": REGEX_STR}


@dataclass(frozen=True)
class GenParams:
    """Generation fields; None means "not set here" (the next layer down decides)."""

    max_tokens: int | None = None
    min_tokens: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    top_logprobs_num: int | None = None
    regex: str | None = None
    json_schema: str | dict | None = None
    dtype: Any = None
    n: int | None = None

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, kwargs: dict, where: str) -> "GenParams":
        unknown = sorted(set(kwargs) - set(cls.fields()))
        if unknown:
            raise TypeError(f"{where}: unknown generation parameter(s) {unknown}; known: {list(cls.fields())}")
        return cls(**kwargs)

    def merged(self, override: "GenParams") -> "GenParams":
        """`override`'s set fields over ours."""
        set_fields = {k: v for k, v in dataclasses.asdict(override).items() if v is not None}
        return dataclasses.replace(self, **set_fields)

    def to_engine(self) -> tuple[dict, dict]:
        """(sampling_params in the engine's names, request options: logprobs)."""
        regex = self.regex
        if self.dtype is not None:
            if self.dtype not in DTYPE_REGEX:
                raise ValueError(f"gen dtype must be int, float, bool or str, got {self.dtype!r}")
            regex = regex or DTYPE_REGEX[self.dtype]
        names = {api: engine for engine, api in OPENAI_NAMES.items()}
        sp = {names.get(k, k): v for k, v in dataclasses.asdict(self).items()
              if v is not None and k not in ("return_logprob", "top_logprobs_num", "dtype", "regex")}
        if regex is not None:
            sp["regex"] = regex
        if isinstance(sp.get("json_schema"), dict):
            sp["json_schema"] = json.dumps(sp["json_schema"])
        options = {"return_logprob": bool(self.return_logprob or self.top_logprobs_num),
                   "top_logprobs_num": self.top_logprobs_num or 0}
        return sp, options


DEFAULT_PARAMS = GenParams(max_tokens=128, temperature=1.0)  # SGLang's defaults: sampling, unless asked otherwise


class Expr:
    """Anything `s += ...` accepts; `a + b` concatenates (strings become `Text`)."""

    def __add__(self, other) -> "Concat":
        return Concat([self, as_expr(other)])

    def __radd__(self, other) -> "Concat":
        return Concat([as_expr(other), self])


def as_expr(value) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Text(value)
    raise TypeError(f"cannot append {type(value).__name__} to a program state; use a str or a frontend expression")


@dataclass
class Text(Expr):
    value: str


@dataclass
class Concat(Expr):
    items: list[Expr]


@dataclass
class Gen(Expr):
    name: str | None
    params: GenParams = field(default_factory=GenParams)
    choices: list[str] | None = None  # gen(choices=...) is a select
    tools: list | None = None  # functions / OpenAI tool dicts: the output is held to calls (runtime.lang.tools)
    tool_choice: Any = None  # "auto" (default with tools) | "required" | "none" | a tool name | OpenAI's dict
    parallel_tool_calls: bool = True  # False: at most one call


@dataclass
class Select(Expr):
    name: str | None
    choices: list[str]
    temperature: float = 0.0
    choices_method: Any = None  # a runtime.lang.choices method (None: token_length_normalized)


@dataclass
class RoleBegin(Expr):
    role: str


@dataclass
class RoleEnd(Expr):
    role: str


@dataclass
class VarScopeBegin(Expr):
    name: str


@dataclass
class VarScopeEnd(Expr):
    name: str


def role_block(role: str, expr) -> Concat:
    """`expr` inside a `role` message (the chat template's markers around it)."""
    return Concat([RoleBegin(role), as_expr(expr), RoleEnd(role)])
