"""Checks on prompt text before a tokenizer sees it, shared by the engine and the server
(a tokenizer raises TypeError on invalid Unicode, and spends seconds on megabytes that
could never fit in the context anyway)."""

from __future__ import annotations


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
