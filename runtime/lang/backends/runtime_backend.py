"""`Runtime`: the engine in this process (it owns a `runtime.Engine`)."""

from __future__ import annotations

from collections.abc import Iterator

from runtime.chat_roles import ChatRoles, read_chat_roles
from runtime.lang.backends.base import SCORE_PARAMS, Backend
from runtime.tool_calls.parsers import ToolParser, get_parser
from runtime.tool_calls.prompt_format import template_input


class Runtime(Backend):
    def __init__(self, model_path: str | None = None, **engine_options) -> None:
        from runtime.engine.api import Engine

        self.engine = Engine(model_path, **engine_options)
        self.tokenizer = self.engine.tokenizer
        self._roles: ChatRoles | None = None
        self._parser: ToolParser | None = None

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        self.engine.shutdown()

    def chat_roles(self) -> ChatRoles:
        if self._roles is None:
            def render(messages: list[dict], add_generation_prompt: bool) -> str:
                return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                          add_generation_prompt=add_generation_prompt)

            self._roles = read_chat_roles(render)
        return self._roles

    def tool_parser(self) -> ToolParser:
        if self._parser is None:
            self._parser = get_parser("auto", self.tokenizer.chat_template)
        return self._parser

    def render_chat(self, messages: list[dict], tools: list[dict] | None) -> str:
        messages, tools = template_input(messages, tools, self.tool_parser().tools_in_prompt)  # as the server
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=False)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generate(self, prompt: str, sampling_params: dict, options: dict) -> list[tuple[str, dict]]:
        out = self.engine.generate(input_ids=self._encode(prompt), sampling_params=sampling_params, **options)
        return [(r["text"], _checked(r["meta_info"])) for r in (out if isinstance(out, list) else [out])]

    def generate_stream(self, prompt: str, sampling_params: dict, options: dict) -> Iterator[tuple[str, dict]]:
        for chunk in self.engine.generate(input_ids=self._encode(prompt), sampling_params=sampling_params,
                                          stream=True, **options):
            yield chunk["delta"], _checked(chunk["meta_info"])

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [self._encode(t) for t in texts]

    def prompt_logprobs(self, input_ids: list[list[int]], start: int) -> list[list]:
        results = self.engine.generate(input_ids=input_ids, sampling_params=[SCORE_PARAMS] * len(input_ids),
                                       return_logprob=True, logprob_start_len=start)
        return [_checked(r["meta_info"])["input_token_logprobs"] for r in results]


def _checked(meta: dict) -> dict:
    """`meta`, unless the engine aborted the request (a bad grammar, a shutdown): then raise."""
    reason = meta.get("finish_reason") or {}
    if reason.get("type") == "abort":
        raise RuntimeError(f"the engine aborted the request: {reason.get('message') or 'no reason given'}")
    return meta
