"""Request bodies (pydantic) for the OpenAI-compatible and SGLang-native endpoints.

Unknown fields are ignored (clients send `user`, `metadata`, `store`, ...). The sampling
fields are generated from `runtime.core.SamplingParams` (under their OpenAI names on the
/v1 routes), so each is declared once; their ranges are checked by
`SamplingParams.validate` for every API, a bad value being a 400 naming the field.
Responses are plain dicts built by the serving modules (cheaper than models on the streaming path).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from runtime.core import OPENAI_NAMES, SamplingParams


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- chat -------------------------------------------------------------------------
class ContentPart(_Body):
    type: str
    text: str | None = None


class FunctionCall(_Body):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Body):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(_Body):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Body):
    """vLLM's `structured_outputs` request field (outlines' from_vllm, vLLM clients): one of these."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    whitespace_pattern: str | None = None  # accepted; our JSON grammar fixes the whitespace


class StreamOptions(_Body):
    include_usage: bool = False


def _sampling_fields(exclude: frozenset[str], rename: dict[str, str]) -> dict[str, Any]:
    """Pydantic fields for SamplingParams' fields: the same types, all optional (None: not
    set, the engine's default applies). Ranges are checked by `SamplingParams.validate`,
    the one validation every API goes through."""
    hints = typing.get_type_hints(SamplingParams)
    return {rename.get(f.name, f.name): (hints[f.name] | None, None)
            for f in dataclasses.fields(SamplingParams) if f.name not in exclude}


# Sampling fields the OpenAI routes take directly: all but `n` (the server runs one engine
# request per choice) and the constraints that arrive checked, through response_format or
# tools (and `json_schema` on /v1/completions).
OPENAI_EXCLUDED = frozenset({"n", "json_schema", "structural_tag"})


class _OpenAIFields(_Body):
    """Fields shared by chat and text completions besides the sampling fields."""

    model: str | None = None
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    cache_salt: str | None = None
    user: str | None = None  # also the session a cache-aware router keeps on one replica (X-Session-ID too)
    rid: str | None = None
    # vLLM's constraint fields, so its clients' structured output is enforced here too
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None  # the names before vLLM 0.12
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


_SamplingFields = create_model("_SamplingFields", __base__=_OpenAIFields,
                               **_sampling_fields(OPENAI_EXCLUDED, OPENAI_NAMES))


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    separate_reasoning: bool = True  # with --reasoning-parser: the reasoning in `reasoning_content`


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None
    json_schema: str | dict[str, Any] | None = None  # an SGLang extra
    response_format: ResponseFormat | None = None


# ---- SGLang native ------------------------------------------------------------------
NativeSamplingParams = create_model(
    "NativeSamplingParams", __config__=ConfigDict(extra="allow"), **_sampling_fields(frozenset(), {}))
NativeSamplingParams.__doc__ = """SGLang sampling params (typed, so a wrong type is a 400 naming the field); other
names pass through and the engine rejects unknown ones with the list of known ones."""


class GenerateRequest(_Body):
    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: NativeSamplingParams | list[NativeSamplingParams] | None = None
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = Field(default=0, ge=0, le=20)
    return_text_in_logprobs: bool = False
    rid: str | list[str] | None = None
    cache_salt: str | None = None
    session_id: str | None = None  # a router keeps a session on one replica (X-Session-ID too)


class TokenizeRequest(_Body):
    """Text, or (as vLLM's /tokenize) chat messages rendered by the chat template."""

    model: str | None = None
    prompt: str | list[str] | None = None
    text: str | list[str] | None = None
    add_special_tokens: bool = False
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None
    add_generation_prompt: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]
    skip_special_tokens: bool = False
