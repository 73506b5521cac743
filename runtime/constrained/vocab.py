"""The tokenizer's vocabulary as exact bytes, and the per-row vocabulary clamp.

Shapes: V = model vocab size (logits width, may be padded past the tokenizer),
V_tok = tokenizer size (ids < V_tok have text), W = ceil(V / 32) bitmask words.

Byte-level BPE tokens (GPT-2 / Qwen / Llama-3 style) map each byte to a printable
character; `token_bytes` undoes that map exactly, so a token that is half of a UTF-8
character is the half byte sequence it really is. SentencePiece vocabularies
(`▁` = space, `<0xNN>` byte fallback) are handled too. Added tokens (everything in
the tokenizer's added-tokens table, e.g. Qwen's 151643..151664) keep their literal
text in `token_bytes`, but are listed in `added_ids`: grammars never produce them
unless they name them.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-character table (bytes that print map to themselves)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _byte_level_bytes(piece: str) -> bytes:
    return bytes(_UNICODE_TO_BYTE[c] for c in piece)


def _sentencepiece_bytes(piece: str) -> bytes:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


@dataclass(eq=False)
class TokenVocab:
    """Exact token bytes + id classes for one (tokenizer, model vocab size, EOS ids)."""

    token_bytes: list[bytes]  # [V_tok]; added tokens hold their literal text
    vocab_size: int  # V (padded model vocab)
    eos_ids: tuple[int, ...]
    added_ids: frozenset[int]  # added/special tokens (EOS included)
    added_by_text: dict[str, int]  # added token text -> id
    # int32 [W]: bit t set iff t is a text token (< V_tok, not added) or an EOS id.
    base_keep: torch.Tensor
    # words [clamp_lo, clamp_hi) of a row hold every bit that base_keep clears
    clamp_lo: int
    clamp_hi: int

    @property
    def num_words(self) -> int:
        return (self.vocab_size + 31) // 32

    @property
    def tokenizer_size(self) -> int:
        return len(self.token_bytes)

    def is_text_token(self, token_id: int) -> bool:
        return 0 <= token_id < len(self.token_bytes) and token_id not in self.added_ids

    # ------------------------------------------------------------------ construction
    @classmethod
    def get(cls, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> "TokenVocab":
        """Cached per (tokenizer object, vocab_size, eos ids): building one costs ~0.3 s."""
        key = (id(tokenizer), vocab_size, tuple(eos_ids))
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None and hit[0]() is tokenizer:
                return hit[1]
        vocab = cls.from_tokenizer(tokenizer, vocab_size, eos_ids)
        with _CACHE_LOCK:
            try:
                _CACHE[key] = (weakref.ref(tokenizer), vocab)
            except TypeError:  # not weak-referenceable: don't cache
                pass
        return vocab

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> "TokenVocab":
        num_tokens = len(tokenizer)
        if vocab_size < num_tokens:
            raise ValueError(f"model vocab size {vocab_size} < tokenizer size {num_tokens}")
        if not eos_ids or any(not 0 <= t < num_tokens for t in eos_ids):
            raise ValueError(f"eos_token_ids {eos_ids} must be non-empty ids < {num_tokens}")
        pieces = tokenizer.convert_ids_to_tokens(list(range(num_tokens)))
        added = {int(i): str(getattr(t, "content", t)) for i, t in tokenizer.added_tokens_decoder.items()}
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = repr(getattr(backend, "decoder", "")) if backend is not None else ""
        byte_level = "ByteLevel" in decoder or (not decoder and "\u0120" in "".join(pieces[:1000]))
        to_bytes = _byte_level_bytes if byte_level else _sentencepiece_bytes
        token_bytes = []
        for i, piece in enumerate(pieces):
            if i in added or piece is None:
                token_bytes.append(added.get(i, "").encode("utf-8"))
            else:
                try:
                    token_bytes.append(to_bytes(piece))
                except KeyError:  # a piece outside the byte alphabet: treat as literal text
                    token_bytes.append(piece.encode("utf-8"))
        added_ids = frozenset(added) | frozenset(eos_ids)
        return cls.from_bytes(token_bytes, vocab_size, eos_ids, added_ids,
                              {text: i for i, text in added.items()})

    @classmethod
    def from_bytes(cls, token_bytes: list[bytes], vocab_size: int, eos_ids: list[int],
                   added_ids: frozenset[int], added_by_text: dict[str, int]) -> "TokenVocab":
        num_words = (vocab_size + 31) // 32
        keep = torch.zeros(num_words * 32, dtype=torch.bool)
        keep[: len(token_bytes)] = True
        cleared = sorted(set(added_ids) - set(eos_ids)) + list(range(len(token_bytes), vocab_size))
        if cleared:
            keep[torch.tensor(cleared)] = False
        keep[list(eos_ids)] = True
        lo = min(cleared) // 32 if cleared else 0
        hi = max(cleared) // 32 + 1 if cleared else 0
        return cls(list(token_bytes), vocab_size, tuple(eos_ids), frozenset(added_ids),
                   dict(added_by_text), pack_bool_mask(keep), lo, hi)

    def added_ids_named_in(self, grammar_text: str) -> frozenset[int]:
        """Added (non-EOS) tokens whose text occurs in `grammar_text`."""
        return frozenset(i for text, i in self.added_by_text.items()
                         if text and text in grammar_text and i not in self.eos_ids)

    # ------------------------------------------------------------------ masks
    def clamp_row_(self, bitmask: torch.Tensor, row: int, allowed_added: frozenset[int] = frozenset()) -> None:
        """AND row `row` of bitmask (int32 [B, W]) with the vocabulary invariants: padded
        ids and added tokens cleared (except `allowed_added` and EOS ids, which keep
        whatever the backend decided)."""
        if self.clamp_hi <= self.clamp_lo:
            return
        keep = self.base_keep[self.clamp_lo: self.clamp_hi]
        if allowed_added:
            keep = keep.clone()
            for t in allowed_added:
                w, b = divmod(t, 32)
                if self.clamp_lo <= w < self.clamp_hi:
                    keep[w - self.clamp_lo] |= _bit(b)
        bitmask[row, self.clamp_lo: self.clamp_hi] &= keep

    def fill_eos_only(self, bitmask: torch.Tensor, row: int) -> None:
        """Row allows exactly the EOS ids (a terminated or finished grammar)."""
        bitmask[row].zero_()
        self.allow_eos_(bitmask, row)

    def allow_eos_(self, bitmask: torch.Tensor, row: int) -> None:
        """Set the EOS bits of row `row`."""
        for t in self.eos_ids:
            w, b = divmod(t, 32)
            bitmask[row, w] |= _bit(b)


def _bit(b: int) -> int:
    """The int32 value with only bit b set (bit 31 is negative in two's complement)."""
    return (1 << b) - (1 << 32) if b == 31 else 1 << b


def pack_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool [..., 32*W] -> int32 [..., W], bit j of word w = mask[..., 32*w + j]."""
    *lead, n = mask.shape
    assert n % 32 == 0, "pad the mask to a multiple of 32 first"
    bits = mask.reshape(*lead, n // 32, 32).to(torch.int64)
    weights = torch.bitwise_left_shift(torch.ones(32, dtype=torch.int64), torch.arange(32))
    words = (bits * weights).sum(-1)  # [..., W] in [0, 2^32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


_CACHE: dict[tuple, tuple[weakref.ref, TokenVocab]] = {}
_CACHE_LOCK = threading.Lock()
