"""`GrammarSpec(reasoning=True)`: free reasoning text first, the grammar after "</think>".

Before the end marker, any text token is allowed (no EOS, no added tokens), except a
token that would run *past* the marker (e.g. "</think>\\n" or "ink>{" after "</th"):
the grammar must start on a token boundary, right after the marker. The marker is
tracked KMP-style as k = how many bytes of it the text currently ends with.

Masks per k (int32 [W]) are built once per (vocabulary, marker): only tokens that
contain the marker's last byte can complete or overshoot it, so the scan is small.
"""

from __future__ import annotations

import threading

import torch

from runtime.constrained.base import REASONING_END, GrammarMatcher
from runtime.constrained.vocab import TokenVocab, pack_bool_mask

_TABLES: dict[tuple[int, bytes], "_MarkerTables"] = {}
_TABLES_LOCK = threading.Lock()


def _advance(marker: bytes, fail: list[int], k: int, data: bytes) -> tuple[int, int]:
    """Run KMP from state k over data. Returns (state, index just past the first full
    match or -1)."""
    for i, byte in enumerate(data):
        while k and marker[k] != byte:
            k = fail[k - 1]
        if marker[k] == byte:
            k += 1
        if k == len(marker):
            return k, i + 1
    return k, -1


class _MarkerTables:
    def __init__(self, vocab: TokenVocab, marker: bytes) -> None:
        self.marker = marker
        fail = [0] * len(marker)  # KMP failure function
        j = 0
        for i in range(1, len(marker)):
            while j and marker[i] != marker[j]:
                j = fail[j - 1]
            if marker[i] == marker[j]:
                j += 1
            fail[i] = j
        self.fail = fail
        text = torch.zeros(vocab.num_words * 32, dtype=torch.bool)  # [32W] text tokens
        text[: vocab.tokenizer_size] = True
        for t in vocab.added_ids:
            text[t] = False
        candidates = [t for t, b in enumerate(vocab.token_bytes) if marker[-1:] in b and vocab.is_text_token(t)]
        self.overshoot: list[set[int]] = []  # per k: tokens that would run past the marker
        masks = []
        for k in range(len(marker)):
            bad = set()
            for t in candidates:
                data = vocab.token_bytes[t]
                _, end = _advance(marker, fail, k, data)
                if 0 <= end < len(data):
                    bad.add(t)
            row = text.clone()
            if bad:
                row[torch.tensor(sorted(bad))] = False
            self.overshoot.append(bad)
            masks.append(row)
        self.masks = pack_bool_mask(torch.stack(masks))  # int32 [len(marker), W]

    @classmethod
    def get(cls, vocab: TokenVocab, marker: bytes) -> "_MarkerTables":
        key = (id(vocab), marker)
        with _TABLES_LOCK:
            tables = _TABLES.get(key)
            if tables is None:
                tables = _TABLES[key] = cls(vocab, marker)
            return tables


class ReasoningMatcher(GrammarMatcher):
    def __init__(self, inner: GrammarMatcher, vocab: TokenVocab, marker: str = REASONING_END) -> None:
        self._inner = inner
        self._vocab = vocab
        self._tables = _MarkerTables.get(vocab, marker.encode())
        self._k = 0  # marker bytes matched so far; len(marker) = the grammar has started
        self._k_history: list[int] = []  # k before each accepted reasoning token
        self._num_inner = 0  # tokens accepted by the inner grammar

    @property
    def in_reasoning(self) -> bool:
        return self._k < len(self._tables.marker)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if self.in_reasoning:
            bitmask[row].copy_(self._tables.masks[self._k])
        else:
            self._inner.fill_bitmask(bitmask, row)

    def accept_token(self, token_id: int) -> bool:
        if not self.in_reasoning:
            ok = self._inner.accept_token(token_id)
            self._num_inner += ok
            return ok
        if not self._vocab.is_text_token(token_id) or token_id in self._tables.overshoot[self._k]:
            return False
        k, _ = _advance(self._tables.marker, self._tables.fail, self._k, self._vocab.token_bytes[token_id])
        self._k_history.append(self._k)
        self._k = k
        return True

    def is_terminated(self) -> bool:
        return not self.in_reasoning and self._inner.is_terminated()

    def jump_forward_string(self) -> str:
        return "" if self.in_reasoning else self._inner.jump_forward_string()

    def rollback(self, num_tokens: int) -> None:
        inner = min(num_tokens, self._num_inner)
        if inner:
            self._inner.rollback(inner)
            self._num_inner -= inner
        for _ in range(num_tokens - inner):
            self._k = self._k_history.pop()

    def copy(self) -> "ReasoningMatcher":
        other = ReasoningMatcher.__new__(ReasoningMatcher)
        other._inner, other._vocab, other._tables = self._inner.copy(), self._vocab, self._tables
        other._k, other._k_history, other._num_inner = self._k, list(self._k_history), self._num_inner
        return other
