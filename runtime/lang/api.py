"""The frontend's public names (SGLang's): `function`, `gen`, `select`, roles, backends."""

from __future__ import annotations

from runtime.lang.ir import (
    REGEX_INT,
    REGEX_STR,
    Concat,
    Gen,
    GenParams,
    RoleBegin,
    RoleEnd,
    Select,
    role_block,
)
from runtime.lang.program import Program

_default_backend = None


def set_default_backend(backend) -> None:
    global _default_backend
    _default_backend = backend


def get_default_backend():
    return _default_backend


def function(func=None, **bound):
    """Decorator: `@function def prog(s, question): s += ...`; also `@function()`."""
    if func is None:
        return lambda f: Program(f, bound)
    return Program(func, bound)


def gen(name: str | None = None, choices: list[str] | None = None, tools: list | None = None,
        tool_choice=None, parallel_tool_calls: bool = True, **params) -> Gen:
    """Generate into variable `name` (`max_tokens`, `stop`, `temperature`, `regex`,
    `json_schema`, `dtype`, `n`, ...: see `GenParams`); with `choices`, a `select`; with
    `tools` (Python functions or OpenAI tool dicts), the model may call them (`tool_choice`
    "auto"), must call one ("required", or a tool's name) or must not ("none"), and
    `s[name]` is the list of calls, each {"id", "name", "arguments": dict} (at most one
    with parallel_tool_calls=False)."""
    if tool_choice is not None and not tools:
        raise ValueError("gen(tool_choice=...) needs tools=[...]")
    return Gen(name, GenParams.from_kwargs(params, "gen"), list(choices) if choices is not None else None,
               list(tools) if tools else None, tool_choice, parallel_tool_calls)


def gen_int(name: str | None = None, **params) -> Gen:
    return gen(name, regex=REGEX_INT, **params)


def gen_string(name: str | None = None, **params) -> Gen:
    return gen(name, regex=REGEX_STR, **params)


def select(name: str | None = None, choices: list[str] | None = None, temperature: float = 0.0,
           choices_method=None) -> Select:
    if not choices:
        raise ValueError("select needs a non-empty list of choices")
    return Select(name, list(choices), temperature, choices_method)


def system(expr="") -> Concat:
    return role_block("system", expr)


def user(expr="") -> Concat:
    return role_block("user", expr)


def assistant(expr="") -> Concat:
    return role_block("assistant", expr)


def tool(expr="") -> Concat:
    """A tool result, as the chat template renders a `tool` message (on the OpenAI backend it
    answers the oldest call not yet answered)."""
    return role_block("tool", expr)


def system_begin():
    return RoleBegin("system")


def system_end():
    return RoleEnd("system")


def user_begin():
    return RoleBegin("user")


def user_end():
    return RoleEnd("user")


def assistant_begin():
    return RoleBegin("assistant")


def assistant_end():
    return RoleEnd("assistant")


def image(*args, **kwargs):
    raise NotImplementedError("image(): radixflow serves text models only")


def video(*args, **kwargs):
    raise NotImplementedError("video(): radixflow serves text models only")
