"""Helpers to exercise a matcher without a model (tests, benchmarks, debugging).

`random_walk` samples from the matcher's own mask: each step it picks an allowed token
at random, accepts it and checks the mask/accept contract (every token the mask
allows is accepted; padded ids are never allowed), until the matcher terminates or
`max_steps` pass. Uniform picks over a 151k vocabulary rarely close a JSON string, so
the walk is biased: EOS when allowed (prob `eos_prob`), and, with a probability that
grows over the walk, tokens that close a structure (`"`, `}`, `]`, `)`) or are short.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from runtime.constrained.base import GrammarMatcher
from runtime.constrained.bitmask import allocate_bitmask
from runtime.constrained.vocab import TokenVocab

_CLOSERS = (b'"', b"}", b"]", b")")


@dataclass
class Walk:
    token_ids: list[int]  # accepted tokens, the final EOS included when terminated
    text: str  # decoded text of the non-EOS tokens
    terminated: bool


def allowed_ids(matcher: GrammarMatcher, vocab_size: int) -> np.ndarray:
    """The matcher's allowed token ids (ascending int64 array)."""
    bitmask = allocate_bitmask(1, vocab_size)
    bitmask.zero_()
    matcher.fill_bitmask(bitmask, 0)
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits)


_PREFERRED: dict[int, tuple[TokenVocab, np.ndarray]] = {}


def _preferred(vocab: TokenVocab) -> np.ndarray:
    """bool [V]: tokens the walk favours (closers and single bytes)."""
    hit = _PREFERRED.get(id(vocab))
    if hit is None or hit[0] is not vocab:
        flags = np.zeros(vocab.vocab_size, dtype=bool)
        flags[[t for t, b in enumerate(vocab.token_bytes) if len(b) <= 1 or any(c in b for c in _CLOSERS)]] = True
        hit = _PREFERRED[id(vocab)] = (vocab, flags)
    return hit[1]


def random_walk(matcher: GrammarMatcher, vocab: TokenVocab, rng: random.Random, max_steps: int = 200,
                eos_prob: float = 0.7, close_bias: float = 0.3) -> Walk:
    tokens: list[int] = []
    is_eos = np.zeros(vocab.vocab_size, dtype=bool)
    is_eos[list(vocab.eos_ids)] = True
    preferred = _preferred(vocab)
    for step in range(max_steps):
        allowed = allowed_ids(matcher, vocab.vocab_size)  # [n] ids
        assert len(allowed), f"no token allowed after {len(tokens)} tokens"
        assert allowed[-1] < vocab.tokenizer_size, "a padded id is allowed"
        ends, pool = allowed[is_eos[allowed]], allowed[~is_eos[allowed]]
        if len(ends) and (rng.random() < eos_prob or not len(pool)):
            pool = ends
        elif rng.random() < close_bias + (1 - close_bias) * step / max_steps:
            pool = pool[preferred[pool]] if preferred[pool].any() else pool
        choice = int(pool[rng.randrange(len(pool))])
        assert matcher.accept_token(choice), f"the mask allowed token {choice} but accept_token refused it"
        tokens.append(choice)
        if matcher.is_terminated():
            break
    text = b"".join(vocab.token_bytes[t] for t in tokens if t not in vocab.eos_ids).decode("utf-8", errors="replace")
    return Walk(tokens, text, matcher.is_terminated())


_SHARED: dict[tuple, object] = {}


def shared_backend(name: str, tokenizer, vocab_size: int, eos_ids: list[int]):
    """One backend per (name, tokenizer, V, EOS) per process (tests share them across modules)."""
    from runtime.constrained.registry import get_backend

    key = (name, id(tokenizer), vocab_size, tuple(eos_ids))
    if key not in _SHARED:
        _SHARED[key] = get_backend(name, tokenizer, vocab_size, eos_ids)
    return _SHARED[key]


def accepts_text(matcher: GrammarMatcher, token_ids: list[int], eos_id: int | None = None) -> bool:
    """Feed token_ids (then eos_id if given); True if all were accepted (and, with an
    EOS, the matcher terminated)."""
    for t in token_ids:
        if not matcher.accept_token(t):
            return False
    if eos_id is not None:
        return matcher.accept_token(eos_id) and matcher.is_terminated()
    return True


class _Added:
    def __init__(self, content: str, special: bool) -> None:
        self.content, self.special = content, special


class ByteTokenizer:
    """A tiny byte-level tokenizer (ids 0..255 = bytes, then added tokens) with the parts
    of the Hugging Face interface the backends read. Lets outlines (whose compile walks
    the whole vocabulary) and xgrammar be probed in milliseconds; llguidance needs a
    real fast tokenizer."""

    def __init__(self, added: tuple[str, ...] = ("<|endoftext|>", "<|im_end|>", "<tool_call>")) -> None:
        from runtime.constrained.vocab import _bytes_to_unicode

        table = _bytes_to_unicode()
        self._pieces = [table[b] for b in range(256)] + list(added)
        self.added_tokens_decoder = {256 + i: _Added(t, t.startswith("<|")) for i, t in enumerate(added)}
        self.eos_token_ids = [256 + i for i, t in enumerate(added) if t.startswith("<|")]
        self.backend_tokenizer = type("Backend", (), {"decoder": "ByteLevel"})()

    def __len__(self) -> int:
        return len(self._pieces)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._pieces[i] for i in ids]

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))
