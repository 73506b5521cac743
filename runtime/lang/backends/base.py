"""The protocols between frontend programs and a runtime.

`Backend` (a text backend: `Runtime`, `RuntimeEndpoint`) completes prompt text
(`generate`, `generate_stream`), tokenizes (`tokenize`), returns prompt logprobs of a
batch (`prompt_logprobs`) and says how the model's chat template marks roles
(`chat_roles`). From the last three, `score_choices` scores `select`'s choices in one
batched request over the shared prefix. For tools it renders a chat with tools
(`render_chat`) and names the model's tool-call format (`tool_parser`).
`ChatBackend` (`OpenAI`) takes the program's messages instead of its text.
Results carry SGLang's meta_info dicts (prompt/completion/cached tokens, finish reason,
logprobs when asked)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from runtime.chat_roles import ChatRoles
from runtime.lang.choices import ChoiceScore
from runtime.tool_calls.parsers import ToolParser

SCORE_PARAMS = {"max_new_tokens": 0, "temperature": 0.0}  # scoring reads prompt logprobs only


class Backend(ABC):
    chat_api = False  # requests carry prompt text

    @abstractmethod
    def chat_roles(self) -> ChatRoles: ...

    @abstractmethod
    def render_chat(self, messages: list[dict], tools: list[dict] | None) -> str:
        """The chat template's text of `messages` (no generation prompt), tools shown."""

    @abstractmethod
    def tool_parser(self) -> ToolParser:
        """The model's tool-call format (the server's parser for its chat template)."""

    def cache_prefix(self, text: str) -> None:
        """Prefill `text` only, so that requests that continue it read it from the cache."""
        self.generate(text, SCORE_PARAMS, {})

    @abstractmethod
    def generate(self, prompt: str, sampling_params: dict, options: dict) -> list[tuple[str, dict]]:
        """One (text, meta_info) per sample (`sampling_params["n"]`, default 1)."""

    @abstractmethod
    def generate_stream(self, prompt: str, sampling_params: dict, options: dict) -> Iterator[tuple[str, dict]]:
        """(new text, meta_info so far) chunks of one sample."""

    @abstractmethod
    def tokenize(self, texts: list[str]) -> list[list[int]]: ...

    @abstractmethod
    def prompt_logprobs(self, input_ids: list[list[int]], start: int) -> list[list]:
        """Per sequence, SGLang triples (logprob, id, text) of its tokens from position `start`
        (position 0 has logprob None); nothing is generated."""

    def shutdown(self) -> None:
        pass

    def score_choices(self, prefix: str, choices: list[str], unconditional: bool) -> list[ChoiceScore]:
        prefix_ids, *full = self.tokenize([prefix, *[prefix + c for c in choices]])
        starts = choice_spans(prefix_ids, full)
        first = min(starts)
        uncond = None
        if unconditional:
            alone = [ids or prefix_ids[-1:] for ids in self.tokenize(list(choices))]
            uncond = self.prompt_logprobs(alone, 0)
        return scores_from_logprobs(starts, first, self.prompt_logprobs(full, first), uncond)


def choice_spans(prefix_ids: list[int], full_ids: list[list[int]]) -> list[int]:
    """Where each choice's tokens start in `prefix + choice`'s tokens: after the tokens it
    shares with the prefix alone (a choice may merge with the prefix's last token; then
    that token counts as the choice's). At least 1 (position 0 has no logprob) and at most
    len - 1 (a choice has at least one token)."""
    starts = []
    for ids in full_ids:
        k = 0
        while k < min(len(prefix_ids), len(ids)) and prefix_ids[k] == ids[k]:
            k += 1
        starts.append(max(1, min(k, len(ids) - 1)))
    return starts


def scores_from_logprobs(starts: list[int], logprob_start: int, input_logprobs: list[list],
                         unconditional_logprobs: list[list] | None) -> list[ChoiceScore]:
    """`input_logprobs[i]`: SGLang triples (logprob, id, text) from position `logprob_start`."""
    scores = []
    for i, start in enumerate(starts):
        own = [lp for lp, *_ in input_logprobs[i][start - logprob_start:]]
        uncond = None
        if unconditional_logprobs is not None:
            uncond = [0.0 if lp is None else lp for lp, *_ in unconditional_logprobs[i]]
            uncond = uncond[len(uncond) - len(own):] if len(uncond) >= len(own) else [0.0] * len(own)
        scores.append(ChoiceScore(own, uncond))
    return scores


class ChatBackend(ABC):
    """A chat-completions API: a program's role blocks become its messages."""

    chat_api = True

    @abstractmethod
    def chat_roles(self) -> ChatRoles:
        """Markers for `s.text()` only (requests carry messages)."""

    @abstractmethod
    def chat(self, messages: list[dict], sampling_params: dict, options: dict, tools: list[dict] | None = None,
             tool_choice=None, parallel_tool_calls: bool = True) -> list[tuple[str, list[dict], dict]]:
        """One (content, tool calls {"id", "name", "arguments": dict}, meta_info) per sample."""

    @abstractmethod
    def chat_stream(self, messages: list[dict], sampling_params: dict, options: dict) -> Iterator[tuple[str, dict]]:
        """(new content, meta_info so far) chunks of one sample."""

    @abstractmethod
    def choose(self, messages: list[dict], choices: list[str]) -> tuple[int, dict]:
        """(index of the choice the model answers with, meta_info)."""

    def cache_prefix(self, messages: list[dict]) -> None:
        """Prefill `messages` only, so that requests that continue them read them from the cache."""

    def shutdown(self) -> None:
        pass
