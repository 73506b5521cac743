"""Tests for runtime.engine.detokenizer.IncrementalDetokenizer (real Qwen2.5 tokenizer).

Invariant: "".join(add(chunk) for chunk in chunks) + flush() == tokenizer.decode(ids).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.engine.detokenizer import IncrementalDetokenizer

HYPO = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIRST_ADDED_ID = 151643  # <|endoftext|>; 151643..151664 are added tokens
VOCAB_LEN = 151665
MODEL_VOCAB = 151936  # padded model vocab: ids 151665.. decode to ''

EMOJI = [
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "❤️",
    "🇯🇵",
    "🧑🏿‍💻",
    "👩‍❤️‍💋‍👨",
    "🤌",
    "🫠",
    "1️⃣",
]
ALPHABET = st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),  # ASCII
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # CJK
    st.characters(min_codepoint=0x3040, max_codepoint=0x30FF),  # kana
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # hangul
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji blocks
    st.sampled_from(["\n", "\t", "\r", " ", "\u3000", "\u00a0", "\u200d", "\ufe0f", "é", "ß", "€"]),
    st.characters(codec="utf-8", exclude_categories=("Cs",)),  # anything encodable
)
TEXT = st.lists(st.one_of(st.text(ALPHABET, min_size=1, max_size=6), st.sampled_from(EMOJI)), max_size=24).map("".join)


def stream(tokenizer, ids, chunk_sizes, skip_special_tokens=True, prompt_ids=None):
    """Feed `ids` in chunks; return the list of emitted pieces (flush last)."""
    det = IncrementalDetokenizer(tokenizer, prompt_ids=prompt_ids, skip_special_tokens=skip_special_tokens)
    pieces, pos, i = [], 0, 0
    while pos < len(ids):
        n = chunk_sizes[i % len(chunk_sizes)] if chunk_sizes else 1
        pieces.append(det.add(ids[pos : pos + n]))
        pos, i = pos + n, i + 1
    pieces.append(det.flush())
    return pieces


@HYPO
@given(text=TEXT, chunks=st.lists(st.integers(1, 6), min_size=1, max_size=8), skip=st.booleans())
def test_text_round_trip(tokenizer, text, chunks, skip):
    ids = tokenizer.encode(text)
    pieces = stream(tokenizer, ids, chunks, skip_special_tokens=skip)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=skip)
    if "\ufffd" not in text:
        # Never emits a partial character: no replacement char ever shows up.
        assert all("\ufffd" not in p for p in pieces)


@HYPO
@given(
    text=TEXT,
    chunks=st.lists(st.integers(1, 4), min_size=1, max_size=8),
    extra=st.lists(st.tuples(st.integers(0, 10_000), st.integers(FIRST_ADDED_ID, MODEL_VOCAB - 1)), max_size=6),
    skip=st.booleans(),
    prompt=st.lists(st.integers(0, MODEL_VOCAB - 1), max_size=6),
)
def test_special_and_out_of_vocab_ids(tokenizer, text, chunks, extra, skip, prompt):
    """Added tokens (special or not) and padded-vocab ids spliced anywhere, even mid-char."""
    ids = tokenizer.encode(text)
    for pos, tok in extra:
        ids.insert(pos % (len(ids) + 1), tok)
    pieces = stream(tokenizer, ids, chunks, skip_special_tokens=skip, prompt_ids=prompt)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=skip)


@pytest.fixture(scope="module")
def byte_ids(tokenizer):
    """byte value -> id of its single-byte token."""
    from runtime.demo.tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return [tokenizer.convert_tokens_to_ids(table[b]) for b in range(256)]


@HYPO
@given(
    data=st.data(),
    chunks=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    skip=st.booleans(),
)
def test_random_ids(tokenizer, byte_ids, data, chunks, skip):
    """Random id sequences: raw byte tokens make arbitrary (often invalid) UTF-8 splits."""
    byte = st.one_of(
        st.integers(0x80, 0xBF),  # continuation bytes
        st.sampled_from([0xC3, 0xE0, 0xE4, 0xED, 0xF0, 0xF4, 0xF8, 0xFF]),  # lead / invalid bytes
        st.integers(0, 255),
    ).map(lambda b: byte_ids[b])
    token = st.one_of(byte, st.integers(0, VOCAB_LEN - 1), st.integers(FIRST_ADDED_ID, MODEL_VOCAB - 1))
    ids = data.draw(st.lists(token, max_size=40))
    pieces = stream(tokenizer, ids, chunks, skip_special_tokens=skip)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=skip)


def test_partial_utf8_is_held(tokenizer, byte_ids):
    det = IncrementalDetokenizer(tokenizer)
    e4, b8, ad = (byte_ids[b] for b in (0xE4, 0xB8, 0xAD))  # "中" == E4 B8 AD
    assert det.add([byte_ids[ord("a")]]) == "a"
    assert det.add([e4]) == ""
    assert det.num_pending == 1
    assert det.add([b8]) == ""
    assert det.add([151645]) == ""  # skipped special token: still waiting
    assert det.add([ad]) == "中"
    assert det.num_pending == 0
    # A lone invalid byte is final immediately (probe), not held until flush.
    assert det.add([byte_ids[0xFF]]) == "\ufffd"
    # Incomplete at the end of the stream: flush decodes with replacement.
    assert det.add([e4, b8]) == ""
    assert det.flush() == "\ufffd"
    assert det.flush() == ""


def test_kept_added_token_ends_partial_char(tokenizer, byte_ids):
    """With skip_special_tokens=False an added token restarts UTF-8 decoding in HF."""
    ids = [byte_ids[0xE4], 151645, byte_ids[0xB8], byte_ids[0xAD], 151657]
    det = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    out = [det.add([i]) for i in ids] + [det.flush()]
    assert "".join(out) == tokenizer.decode(ids, skip_special_tokens=False) == "\ufffd<|im_end|>\ufffd\ufffd<tool_call>"
    det = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
    out = [det.add([i]) for i in ids] + [det.flush()]
    assert "".join(out) == tokenizer.decode(ids, skip_special_tokens=True) == "中<tool_call>"


def test_window_stays_small(tokenizer):
    """O(1) per token: the decoded window never grows with the sequence."""
    text = ("def f(x):\n    return x + 1  # 注释 😀 émoji 👨‍👩‍👧‍👦\n" * 40).strip()
    ids = tokenizer.encode(text)
    det = IncrementalDetokenizer(tokenizer, prompt_ids=tokenizer.encode("prompt: "))
    out, longest = [], 0
    for i in ids:
        out.append(det.add([i]))
        longest = max(longest, len(det._ids))
    out.append(det.flush())
    assert "".join(out) == text
    assert longest <= 8, longest


def test_empty_and_prompt_only(tokenizer):
    det = IncrementalDetokenizer(tokenizer, prompt_ids=[9707, 1879])
    assert det.add([]) == ""
    assert det.flush() == ""
    assert det.add([11]) == ","  # continuation text only, never the prompt's
