"""LlamaIndex: `Radixflow`, a FunctionCallingLLM on the runtime in this process (default
model when no argument) or on a running server (`base_url=`), and `program_tool`, a frontend
program (`runtime.lang`) as a LlamaIndex FunctionTool an agent can call.

Radixflow is llama-index's OpenAILike pointed at our OpenAI API (in process: a LocalServer),
so complete/chat/stream/async and function calling follow its OpenAI conventions. What it
adds: `structured_predict` and forced tool calls decoded under the tool's grammar (the
output parses into the schema on the first try), our constraints (`regex=`, `choices=`,
`ebnf=`) and `cache_salt=` sent with every request, the served model's context window, and
`close()` / `with Radixflow() as llm:` stopping the in-process engine.
"""

from __future__ import annotations

import inspect
from typing import Any

from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike
from pydantic import PrivateAttr

from runtime.integrations.common import extra_body, program_parameters, run_program
from runtime.integrations.local_server import LocalServer, served_model


class Radixflow(OpenAILike):
    _local_server: LocalServer | None = PrivateAttr(default=None)

    def __init__(self, model_path: str | None = None, base_url: str | None = None,
                 engine_options: dict[str, Any] | None = None, regex: str | None = None,
                 choices: list[str] | None = None, ebnf: str | None = None, cache_salt: str | None = None,
                 **kwargs: Any) -> None:
        server = None
        if base_url is None:
            server = LocalServer(model_path, **(engine_options or {}))
            base_url = server.openai_base_url
        try:
            model, context = served_model(base_url)
            body = extra_body({"regex": regex, "choices": choices, "ebnf": ebnf, "cache_salt": cache_salt})
            additional = dict(kwargs.pop("additional_kwargs", None) or {})
            if body:
                additional["extra_body"] = {**additional.get("extra_body", {}), **body}
            kwargs.setdefault("model", model)
            kwargs.setdefault("context_window", context)
            kwargs.setdefault("api_key", "unused")
            super().__init__(api_base=base_url, is_chat_model=True, is_function_calling_model=True,
                             additional_kwargs=additional, **kwargs)
        except BaseException:
            if server is not None:
                server.close()
            raise
        self._local_server = server

    @classmethod
    def class_name(cls) -> str:
        return "Radixflow"

    def close(self) -> None:
        if self._local_server is not None:
            self._local_server.close()

    def __enter__(self) -> "Radixflow":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def program_tool(program, backend=None, output: str | list[str] | None = None, name: str | None = None,
                 description: str | None = None, **run_options) -> FunctionTool:
    """A `runtime.lang` program as a FunctionTool: its arguments are the program's (after
    `s`), its result the program's variables or what `output` names (programs.run_program)."""

    def call(**arguments):
        return run_program(program, arguments, backend, output, **run_options)

    call.__signature__ = inspect.Signature(program_parameters(program))
    call.__name__ = name or program.__name__
    doc = description or inspect.getdoc(program.func) or f"Run the {program.__name__} program."
    return FunctionTool.from_defaults(fn=call, name=call.__name__, description=doc)
