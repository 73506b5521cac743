"""Checks on prompts, shared by the engine and the server: the text before a tokenizer
sees it (a tokenizer raises TypeError on invalid Unicode, and spends seconds on megabytes
that could never fit in the context anyway), and the token counts against the context."""

from __future__ import annotations

from runtime.core import SamplingParamError


def max_prompt_bytes(tokenizer, context_length: int) -> int:
    """An upper bound on the UTF-8 size of a prompt that fits in `context_length` tokens:
    no token covers more bytes than the longest vocabulary entry (byte-level BPE entries
    are one character per byte; others are a safe overestimate)."""
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return context_length * max(longest, 4)


def check_prompt_text(text: str, max_bytes: int | None = None, what: str = "the prompt") -> None:
    """ValueError for text that is not valid Unicode (a lone surrogate, as JSON's \\ud800
    escape gives) or too long to fit in the context."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode text: a lone surrogate U+{ord(text[e.start]):04X} at "
                         f"character {e.start}") from None
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{what} has {size} bytes: more than any prompt that fits in the context "
                         f"(at most {max_bytes} bytes)")


def check_fits(prompt_tokens: int, max_new_tokens: int, context_length: int, max_total_tokens: int) -> None:
    """The one length rule, for every API: a non-empty prompt shorter than the context,
    room in the context for `max_new_tokens` more, and the prompt plus one token in the
    KV pool. ValueError for the prompt; SamplingParamError("max_new_tokens") for the budget."""
    if prompt_tokens == 0:
        raise ValueError("the prompt is empty: at least one token is required")
    if prompt_tokens >= context_length:
        raise ValueError(f"this model's maximum context length is {context_length} tokens, but the prompt "
                         f"has {prompt_tokens} tokens (prompt tokens must be < context length)")
    if prompt_tokens + 1 > max_total_tokens:
        raise ValueError(f"the prompt has {prompt_tokens} tokens; the KV pool holds {max_total_tokens} "
                         f"(max_total_tokens)")
    if prompt_tokens + max_new_tokens > context_length:
        raise SamplingParamError("max_new_tokens", (
            f"this model's maximum context length is {context_length} tokens; {prompt_tokens + max_new_tokens} "
            f"were requested ({prompt_tokens} in the prompt, {max_new_tokens} for the output): reduce "
            f"max_new_tokens (at most {context_length - prompt_tokens} here) or the prompt"))
