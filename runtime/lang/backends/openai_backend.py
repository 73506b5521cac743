"""`OpenAI`: any OpenAI-compatible chat-completions server (ours, vLLM, OpenAI's).

A program's role blocks become the request's messages; `gen` must open an assistant
block (chat APIs cannot continue a half-written reply). Sampling fields that OpenAI
lacks (top_k, min_p, regex, stop_regex, ...) go in the request body as the extras that
radixflow, SGLang and vLLM read; `json_schema` becomes a strict `response_format`.
`select` asks for one of the choices under a regex constraint (no prompt logprobs over
this API). A server error raises `RuntimeError` with the server's message."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator

from runtime.chat_roles import ChatRoles
from runtime.core import OPENAI_NAMES, SamplingParams
from runtime.lang.backends.base import ChatBackend

# s.text() of a chat program: one "role: content" line per message
TRANSCRIPT_ROLES = ChatRoles({r: (f"{r}: ", "\n") for r in ("system", "user", "assistant", "tool")}, "")
# sampling fields OpenAI's API itself takes; the others go in `extra_body` (this server's extras)
STANDARD = frozenset({"max_new_tokens", "temperature", "top_p", "n", "stop", "frequency_penalty",
                      "presence_penalty", "sampling_seed"})
EXTRA = frozenset(f.name for f in dataclasses.fields(SamplingParams)) - STANDARD - {"json_schema", "structural_tag"}


class OpenAI(ChatBackend):
    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0) -> None:
        try:
            import openai
        except ImportError:
            raise ImportError("rt.OpenAI needs the openai client: pip install 'radixflow[openai]'") from None

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"),
                                    timeout=timeout)
        self.model = model or self.client.models.list().data[0].id
        self.prefill_hints = True  # off once the server refuses max_tokens=0

    def shutdown(self) -> None:
        self.client.close()

    def chat_roles(self) -> ChatRoles:
        return TRANSCRIPT_ROLES

    def _request(self, messages: list[dict], sampling_params: dict, options: dict) -> dict:
        body: dict = {"model": self.model, "messages": messages}
        extra: dict = {}
        for key, value in sampling_params.items():
            if key in STANDARD:
                body[OPENAI_NAMES.get(key, key)] = value
            elif key in EXTRA:
                extra[OPENAI_NAMES.get(key, key)] = value
            elif key == "json_schema":
                schema = json.loads(value) if isinstance(value, str) else value
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "output", "schema": schema, "strict": True}}
            else:
                raise ValueError(f"the OpenAI backend cannot send sampling parameter {key!r}")
        if options.get("return_logprob"):
            body["logprobs"] = True
            body["top_logprobs"] = options.get("top_logprobs_num") or 0
        if extra:
            body["extra_body"] = extra
        return body

    def _create(self, **body):
        import openai

        try:
            return self.client.chat.completions.create(**body)
        except openai.APIStatusError as e:
            message = e.body.get("message", e.body) if isinstance(e.body, dict) else e.message
            raise RuntimeError(f"{self.client.base_url} answered {e.status_code}: {message}") from None

    def chat(self, messages: list[dict], sampling_params: dict, options: dict, tools: list[dict] | None = None,
             tool_choice=None, parallel_tool_calls: bool = True) -> list[tuple[str, list[dict], dict]]:
        body = self._request(messages, sampling_params, options)
        if tools:
            body["tools"], body["parallel_tool_calls"] = tools, parallel_tool_calls
            if tool_choice is not None:
                body["tool_choice"] = (tool_choice if tool_choice in ("auto", "required", "none")
                                       or isinstance(tool_choice, dict)
                                       else {"type": "function", "function": {"name": tool_choice}})
        response = self._create(**body)
        out = []
        for choice in response.choices:
            calls = [{"id": c.id, "name": c.function.name, "arguments": json.loads(c.function.arguments or "{}")}
                     for c in choice.message.tool_calls or []]
            meta = _meta(response.id, response.usage, choice.finish_reason)
            if choice.logprobs is not None and choice.logprobs.content is not None:
                meta["output_token_logprobs"] = [(t.logprob, None, t.token) for t in choice.logprobs.content]
                meta["output_top_logprobs"] = [[(x.logprob, None, x.token) for x in t.top_logprobs]
                                               for t in choice.logprobs.content]
            out.append((choice.message.content or "", calls, meta))
        return out

    def chat_stream(self, messages: list[dict], sampling_params: dict, options: dict) -> Iterator[tuple[str, dict]]:
        body = self._request(messages, sampling_params, options)
        meta: dict = {"output_token_logprobs": []} if options.get("return_logprob") else {}
        for chunk in self._create(**body, stream=True, stream_options={"include_usage": True}):
            if chunk.usage is not None:
                meta.update(_meta(chunk.id, chunk.usage, meta.get("finish_reason", {}).get("type")))
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.logprobs is not None and choice.logprobs.content:
                meta["output_token_logprobs"] += [(t.logprob, None, t.token) for t in choice.logprobs.content]
            if choice.finish_reason is not None:
                meta["finish_reason"] = {"type": choice.finish_reason}
            yield choice.delta.content or "", dict(meta)

    def cache_prefix(self, messages: list[dict]) -> None:
        if not self.prefill_hints:
            return
        try:
            self.chat(messages, {"max_new_tokens": 0, "temperature": 0.0}, {})
        except RuntimeError:
            self.prefill_hints = False  # e.g. OpenAI's API: max_tokens must be >= 1

    def choose(self, messages: list[dict], choices: list[str]) -> tuple[int, dict]:
        pattern = "(" + "|".join(re.escape(c) for c in choices) + ")"
        longest = max(len(c) for c in choices)
        [(content, _, meta)] = self.chat(messages, {"temperature": 0.0, "max_new_tokens": 4 * longest + 16,
                                                    "regex": pattern}, {})
        answer = content.strip()
        if answer not in choices:  # a server that ignored the constraint: the choice it starts with
            starts = [i for i, c in enumerate(choices) if answer.startswith(c)]
            if not starts:
                raise RuntimeError(f"the server answered {content!r}, none of the choices {choices}; it does not "
                                   f"enforce the 'regex' constraint")
            return max(starts, key=lambda i: len(choices[i])), meta
        return choices.index(answer), meta


def _meta(rid: str, usage, finish_reason: str | None) -> dict:
    meta: dict = {"id": rid, "finish_reason": {"type": finish_reason}}
    if usage is not None:
        details = getattr(usage, "prompt_tokens_details", None)
        meta.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                    cached_tokens=(getattr(details, "cached_tokens", None) or 0) if details else 0)
    return meta
