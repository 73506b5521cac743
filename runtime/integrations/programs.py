"""Frontend programs (`runtime.lang` @function) as steps of an agent framework: run one
with keyword arguments and hand back what the framework passes on."""

from __future__ import annotations

import inspect
from typing import Any


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
