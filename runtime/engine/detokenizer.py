"""Incremental (streaming) detokenization with O(1) work per token.

Model: for byte-level BPE tokenizers (Qwen2, Llama-3, GPT-2 style), `tokenizer.decode(ids)`
concatenates the bytes of the ids (skipped special tokens and ids beyond the vocab
contribute nothing; a kept *added* token inserts its text verbatim and restarts UTF-8
decoding) and decodes them with replacement (U+FFFD) for ill-formed UTF-8.

Key fact: call the end of an id sequence *clean* when the UTF-8 decoder is in its
initial state there (no partially read character). If decode(a) ends clean, then
    decode(a + b) == decode(a) + decode(b).
Also, every suffix of a clean-ending sequence, decoded on its own, ends clean (UTF-8
resynchronizes at the first non-continuation byte). So we keep only a short window.

State: `_ids` is the live window and 0 <= _read_offset <= len(_ids):
    * _ids[:_read_offset] (at most _CONTEXT_TOKENS ids) were already emitted and are
      kept as left context, so tokenizers whose decode depends on the left neighbour
      (e.g. SentencePiece leading-space handling) see some; decoded alone they end clean;
    * _prefix_text == decode(_ids[:_read_offset]);
    * _ids[_read_offset:] are pending: their text is not final yet.
`add` decodes the window and, once its end is clean, emits what follows `_prefix_text`.
A trailing U+FFFD means "maybe an incomplete character": for byte-level tokenizers we
settle it exactly by probing with two lone continuation bytes (0x80 and 0xA0; at least
one of them continues every incomplete UTF-8 prefix); otherwise we wait for more tokens.
So the window holds at most _CONTEXT_TOKENS ids plus the ids of one partial character
(and any zero-byte ids, i.e. skipped special tokens, in between): O(1) work per token.

Invariant (tested with hypothesis): concatenation of all `add` outputs + `flush()`
== tokenizer.decode(all_added_ids, skip_special_tokens=...) for byte-level BPE tokenizers.
"""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT_CHAR = "\ufffd"
_CONTEXT_TOKENS = 4  # emitted (or prompt) tokens kept as left context for the next decode


def _byte_level_char(byte: int) -> str:
    """GPT-2 bytes_to_unicode image of one byte (the byte-level BPE vocab alphabet)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    if byte in printable:
        return chr(byte)
    non_printable = [b for b in range(256) if b not in printable]
    return chr(256 + non_printable.index(byte))


class IncrementalDetokenizer:
    """Turns a growing stream of token ids into finalized text chunks.

    `prompt_ids` (optional) supply left context for the first generated tokens; for
    byte-level BPE this never changes the output (it equals decode(generated ids)).
    `spaces_between_special_tokens` is accepted for API compatibility; HF fast
    tokenizers ignore it in `decode`, and so does this class.
    """

    def __init__(
        self,
        tokenizer,
        prompt_ids: Sequence[int] | None = None,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self._probe_ids = self._find_probe_ids(tokenizer)

        self._ids: list[int] = []
        self._read_offset = 0
        self._prefix_text = ""
        if prompt_ids is not None and len(prompt_ids) > 0:
            ctx = [int(t) for t in prompt_ids[-_CONTEXT_TOKENS:]]
            # Use the context only if it ends clean; otherwise the prompt's partial char
            # would merge into the output and change it vs decode(generated ids).
            if self._ends_clean(ctx, self._decode(ctx)):
                self._ids = ctx
                self._read_offset = len(ctx)
                self._prefix_text = self._decode(ctx)

    # -- public API -------------------------------------------------------------------

    def add(self, token_ids: Sequence[int]) -> str:
        """Append ids; return the text that became final (possibly '')."""
        if len(token_ids) == 0:
            return ""
        self._ids.extend(int(t) for t in token_ids)
        text = self._decode(self._ids)
        if not self._ends_clean(self._ids, text):
            return ""  # the last character is incomplete: wait for more tokens
        return self._emit(text)

    def flush(self) -> str:
        """End of stream: return everything still pending (partial chars become U+FFFD).

        Ids added after a flush are detokenized as a fresh stream (no context).
        """
        pending = self._read_offset < len(self._ids)
        delta = self._decode(self._ids)[len(self._prefix_text) :] if pending else ""
        self._ids, self._read_offset, self._prefix_text = [], 0, ""
        return delta

    @property
    def num_pending(self) -> int:
        """Tokens received whose text has not been emitted yet."""
        return len(self._ids) - self._read_offset

    # -- internals --------------------------------------------------------------------

    def _emit(self, text: str) -> str:
        """Emit window text beyond the context and slide the window forward."""
        delta = text[len(self._prefix_text) :]
        # New context = the window's last few ids (a suffix of a clean-ending sequence,
        # hence itself clean-ending); memory stays O(1).
        self._ids = self._ids[-_CONTEXT_TOKENS:]
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        return delta

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(
            ids,
            skip_special_tokens=self.skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    def _ends_clean(self, ids: list[int], text: str) -> bool:
        """Is the UTF-8 decoder in its initial state after `ids` (whose decode is `text`)?"""
        if not text.endswith(REPLACEMENT_CHAR):
            return True  # ends with a complete character (or an added token)
        if not self._probe_ids:
            return False  # cannot tell a final U+FFFD from an incomplete char: wait
        # From the initial state a lone continuation byte decodes to exactly one U+FFFD;
        # inside an incomplete char, one of the two probes changes the decoded tail.
        return all(self._decode(ids + [p]) == text + REPLACEMENT_CHAR for p in self._probe_ids)

    @staticmethod
    def _find_probe_ids(tokenizer) -> list[int]:
        """Ids of the single-byte tokens 0x80 and 0xA0, for byte-level BPE tokenizers."""
        try:
            from tokenizers import decoders

            if not isinstance(tokenizer.backend_tokenizer.decoder, decoders.ByteLevel):
                return []
            probes = [tokenizer.backend_tokenizer.token_to_id(_byte_level_char(b)) for b in (0x80, 0xA0)]
        except (AttributeError, ImportError):
            return []
        if any(p is None for p in probes):
            return []
        # Sanity check: a lone continuation byte must decode to one replacement char.
        if any(tokenizer.decode([p], skip_special_tokens=False) != REPLACEMENT_CHAR for p in probes):
            return []
        return probes
