"""DSPy on a Radixflow server: `radixflow_lm(base_url, model)` is a `dspy.LM` whose provider
DSPy knows to enforce structure.

DSPy (3.4+) sends `response_format` (a JSON schema of the signature's outputs) and native tools
only to models whose capabilities it knows; an unknown `openai/<model>` gets neither, and a
small model then has to write DSPy's field markers by itself. So this declares the server as a
DSPy provider (`dspy.lm15.register_provider`) stating what our grammar enforces: JSON-schema
output and tool calls. Everything else is DSPy's own OpenAI-chat path.
"""

from __future__ import annotations

import dspy
from dspy.lm15 import (
    AccessPolicy,
    EndpointSupport,
    ModelSupport,
    OpenAIChatCompat,
    ProviderDefinition,
    register_provider,
)

# what the server enforces by grammar (response_format json_schema, tool_choice and tool calls)
RADIXFLOW_SUPPORT = ModelSupport(function_calling=True, response_schema=True)


def register_server(base_url: str, provider: str = "radixflow") -> str:
    """Declare the server at `base_url` (…/v1) as DSPy provider `provider`; returns the id.

    A registration is process-wide and bound by each `dspy.LM` when it is constructed, so
    registering another address under the same id only changes LMs made afterwards."""
    access = AccessPolicy(provider=provider, supports=EndpointSupport(complete=True, stream=True, models=True),
                          auth_modes=("bearer",), env_keys=(), base_url=base_url)
    # vLLM's dialect of the chat wire is ours (max_tokens, stream usage, reasoning_effort)
    definition = ProviderDefinition.chat(access, compat=OpenAIChatCompat.preset("vllm"), placeholder_key="unused",
                                         note="Radixflow server")
    return register_provider(definition, supports=RADIXFLOW_SUPPORT, replace=True).id


def radixflow_lm(base_url: str, model: str, *, provider: str = "radixflow", **lm_kwargs) -> dspy.LM:
    """A `dspy.LM` for `model` served at `base_url` (e.g. `LocalServer().openai_base_url`).
    `lm_kwargs` are dspy.LM's (temperature, max_tokens, cache, api_key, ...)."""
    return dspy.LM(f"{register_server(base_url, provider)}/{model}", **lm_kwargs)
