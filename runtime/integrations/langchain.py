"""LangChain: `ChatRadixflow`, a chat model on the runtime in this process (default model when
no argument) or on a running server (`base_url=`), and `program_runnable`, a frontend
program (`runtime.lang`) as a LangChain Runnable.

ChatRadixflow is langchain-openai's ChatOpenAI pointed at our OpenAI API (in process: a
LocalServer), so messages, streaming, `bind_tools` and tool-call chunks follow LangChain's
OpenAI conventions exactly. What it adds:
  * structure enforced, not requested: `with_structured_output` defaults to strict
    `json_schema`, and tool calls forced by `tool_choice` ("required" or a named tool) are
    decoded under the tool's grammar, so the output parses into the schema on the first try;
  * constraints of our own per instance or per call: `regex=`, `choices=` (one of the
    strings), `ebnf=`; `cache_salt=` (a tenant's own prefix cache);
  * `usage_metadata["input_token_details"]["cache_read"]`: prompt tokens the radix cache
    served (an agent's history is re-read from the cache at every step);
  * `close()` / `with ChatRadixflow() as llm:` stop the in-process engine.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI
from pydantic import Field, model_validator

from runtime.integrations.common import EXTRA_BODY_FIELDS, extra_body, run_program
from runtime.integrations.local_server import LocalServer, served_model


class ChatRadixflow(ChatOpenAI):
    model_path: str | None = Field(default=None, description="checkpoint or .gguf to run in this process")
    engine_options: dict[str, Any] = Field(default_factory=dict, description="Engine(**options) in this process")
    regex: str | None = None
    choices: list[str] | None = None
    ebnf: str | None = None
    cache_salt: str | None = None
    local_server: Any = Field(default=None, exclude=True, description="the LocalServer this instance started")

    @model_validator(mode="before")
    @classmethod
    def _start_runtime(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        base_url = values.get("base_url") or values.get("openai_api_base")
        if base_url is None and values.get("local_server") is None:
            server = LocalServer(values.get("model_path"), **values.get("engine_options", {}))
            values = {**values, "local_server": server, "base_url": server.openai_base_url}
            values.setdefault("model", server.model)
        elif base_url is not None and not (values.get("model") or values.get("model_name")):
            values = {**values, "model": served_model(base_url)[0]}
        if not any(values.get(k) for k in ("api_key", "openai_api_key")) and not os.environ.get("OPENAI_API_KEY"):
            values = {**values, "api_key": "unused"}  # the server takes any key unless started with --api-key
        values.setdefault("stream_usage", True)  # our streams carry usage (and cached tokens) at the end
        return values

    @property
    def _llm_type(self) -> str:
        return "radixflow"

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False  # langchain_core.load revives only the classes on its own allowlist

    def _get_request_payload(self, input_, *, stop=None, **kwargs):
        own = {k: getattr(self, k) for k in EXTRA_BODY_FIELDS}
        own.update({k: kwargs.pop(k) for k in EXTRA_BODY_FIELDS if k in kwargs})
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        body = extra_body(own)
        if body:
            payload["extra_body"] = {**(payload.get("extra_body") or {}), **body}
        return payload

    def with_structured_output(self, schema=None, *, method="json_schema", include_raw=False, strict=None,
                               **kwargs):
        """Strict JSON schema by default: our grammar enforces it while decoding ("json_mode"
        takes no schema, so no strict)."""
        if strict is None and method != "json_mode":
            strict = True
        return super().with_structured_output(schema, method=method, include_raw=include_raw, strict=strict,
                                              **kwargs)

    def close(self) -> None:
        if self.local_server is not None:
            self.local_server.close()

    def __enter__(self) -> "ChatRadixflow":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def program_runnable(program, backend=None, output: str | list[str] | None = None, **run_options) -> RunnableLambda:
    """A `runtime.lang` program (`@function`) as a Runnable: its input is a dict of the
    program's arguments; its output the program's variables, or what `output` names
    (programs.run_program). `backend`: Runtime, RuntimeEndpoint or OpenAI (default: the one
    set with `runtime.lang.set_default_backend`)."""

    def run(inputs: dict) -> Any:
        return run_program(program, inputs, backend, output, **run_options)

    async def arun(inputs: dict) -> Any:
        return await asyncio.to_thread(run, inputs)

    return RunnableLambda(run, afunc=arun, name=program.__name__)
