"""The frontend language: call-flow programs (`function`, `gen`, `select`, roles, `fork`)
that run against a backend (`Runtime` in-process, `RuntimeEndpoint` over a server's
native API, `OpenAI` over any chat-completions API). Names
and semantics follow SGLang's frontend, so its programs run after changing the import."""

from runtime.lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    function,
    gen,
    gen_int,
    gen_string,
    get_default_backend,
    image,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    tool,
    user,
    user_begin,
    user_end,
    video,
)
from runtime.lang.choices import greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized
from runtime.lang.state import ForkGroup, ProgramState

__all__ = [
    "assistant", "assistant_begin", "assistant_end", "function", "gen", "gen_int", "gen_string",
    "get_default_backend", "image", "select", "set_default_backend", "system", "system_begin", "system_end",
    "tool", "user", "user_begin", "user_end", "video", "greedy_token_selection", "token_length_normalized",
    "unconditional_likelihood_normalized", "ForkGroup", "ProgramState",
]
BACKENDS = ("Runtime", "RuntimeEndpoint", "OpenAI")  # imported on first use (torch, HTTP clients)


def __getattr__(name: str):
    if name == "Runtime":
        from runtime.lang.backends.runtime_backend import Runtime

        return Runtime
    if name == "RuntimeEndpoint":
        from runtime.lang.backends.endpoint import RuntimeEndpoint

        return RuntimeEndpoint
    if name == "OpenAI":
        from runtime.lang.backends.openai_backend import OpenAI

        return OpenAI
    raise AttributeError(f"module 'runtime.lang' has no attribute {name!r}")
