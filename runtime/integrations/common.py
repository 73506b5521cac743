"""What the framework plugins share: our request fields beside OpenAI's (constraints,
cache_salt), and frontend programs (`runtime.lang` @function) run as agent steps."""

from __future__ import annotations

import inspect
from typing import Any

from runtime.constrained.regex_util import choices_regex

# request fields of ours that travel in the OpenAI request's body beside the standard ones
EXTRA_BODY_FIELDS = ("regex", "choices", "ebnf", "cache_salt")


def extra_body(params: dict[str, Any]) -> dict[str, Any]:
    """Our constraint fields -> the request's extra body (`choices` becomes a regex)."""
    body = {k: v for k, v in params.items() if k in EXTRA_BODY_FIELDS and v is not None}
    if "choices" in body:
        if "regex" in body:
            raise ValueError("choices and regex cannot be combined (one constraint per request)")
        body["regex"] = choices_regex(list(body.pop("choices")))
    return body


def run_program(program, arguments: dict, backend=None, output: str | list[str] | None = None,
                **run_options) -> Any:
    """The program's variables (dict), or one variable's value when `output` names it (a
    list: a dict of those). backend None: runtime.lang's default backend."""
    state = program.run(**arguments, backend=backend, **run_options)
    if isinstance(output, str):
        return state[output]
    names = output if output is not None else list(state.variables)
    return {name: state[name] for name in names}


def program_parameters(program) -> list[inspect.Parameter]:
    """The program's own arguments: its function's parameters after the state `s`."""
    return list(inspect.signature(program.func).parameters.values())[1:]
