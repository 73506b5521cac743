"""GrammarCompiler (cache, failures, timeouts, thread pool), bitmask application, and
the vocabulary table/clamp. Uses fake backends and the byte tokenizer: no native compile."""

from __future__ import annotations

import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
import torch

from runtime.constrained import (
    CompiledGrammar,
    GrammarBackend,
    GrammarCompiler,
    GrammarError,
    GrammarMatcher,
    GrammarSpec,
    allocate_bitmask,
    apply_bitmask_,
    bitmask_to_bool,
)
from runtime.constrained.testing import ByteTokenizer
from runtime.constrained.vocab import TokenVocab, pack_bool_mask


class FakeBackend(GrammarBackend):
    """Compiles regex specs after `delay` seconds; "bad" values fail."""

    name = "fake"
    supported_kinds = frozenset({"regex"})

    def __init__(self, delay: float = 0.0) -> None:
        tok = ByteTokenizer()
        super().__init__(tok, len(tok), tok.eos_token_ids)
        self.delay, self.calls = delay, 0
        self.release = threading.Event()

    def _compile(self, spec: GrammarSpec) -> CompiledGrammar:
        self.calls += 1
        if self.delay:
            self.release.wait(self.delay)
        if spec.value == "bad":
            raise RuntimeError("boom")
        return CompiledGrammar(spec, handle=object())

    def _new_matcher(self, compiled: CompiledGrammar) -> GrammarMatcher:
        raise NotImplementedError


def test_cache_hit_returns_the_same_object():
    compiler = GrammarCompiler(FakeBackend(), max_workers=2)
    a = compiler.submit(GrammarSpec.from_regex("a+")).result(timeout=5)
    b = compiler.submit(GrammarSpec.from_regex("a+")).result(timeout=5)
    c = compiler.submit(GrammarSpec.from_regex("b+")).result(timeout=5)
    assert a is b and a is not c
    assert compiler.backend.calls == 2 and compiler.stats.hits == 1 and compiler.stats.misses == 2
    assert compiler.compile(GrammarSpec.from_regex("a+")) is a


def test_failures_are_cached_only_briefly():
    compiler = GrammarCompiler(FakeBackend(), error_ttl_s=0.2)
    fut = compiler.submit(GrammarSpec.from_regex("bad"))
    with pytest.raises(GrammarError, match="fake could not compile the regex grammar: boom"):
        fut.result(timeout=5)
    assert compiler.submit(GrammarSpec.from_regex("bad")) is fut  # a burst shares one failure
    time.sleep(0.25)
    again = compiler.submit(GrammarSpec.from_regex("bad"))
    assert again is not fut  # later: compiled again
    with pytest.raises(GrammarError):
        again.result(timeout=5)
    assert compiler.backend.calls == 2
    with pytest.raises(GrammarError, match="does not support kind 'ebnf'"):
        compiler.compile(GrammarSpec.from_ebnf('root ::= "a"'))


def test_slow_compile_is_detectable_via_the_future():
    backend = FakeBackend(delay=30.0)
    compiler = GrammarCompiler(backend, max_workers=1)
    fut = compiler.submit(GrammarSpec.from_regex("slow"))
    with pytest.raises(FutureTimeout):
        fut.result(timeout=0.05)  # what a scheduler with a compile timeout sees
    assert not fut.done()
    assert compiler.submit(GrammarSpec.from_regex("slow")) is fut  # pending futures are shared
    backend.release.set()  # let the worker finish
    assert fut.result(timeout=5).spec.value == "slow"
    compiler.shutdown(wait=True)


class SlowOnlyBackend(FakeBackend):
    """Values starting with "slow" wait for `release`; the rest compile at once."""

    def _compile(self, spec: GrammarSpec) -> CompiledGrammar:
        if spec.value.startswith("slow"):
            self.release.wait(30.0)
        return CompiledGrammar(spec, handle=object())


def test_an_abandoned_compile_stops_holding_up_the_queue():
    backend = SlowOnlyBackend()
    compiler = GrammarCompiler(backend, max_workers=1, max_abandoned=1)
    slow = compiler.submit(GrammarSpec.from_regex("slow"))
    fast = compiler.submit(GrammarSpec.from_regex("a+"))
    with pytest.raises(FutureTimeout):
        fast.result(timeout=0.2)  # queued behind the one worker
    compiler.abandon(slow)  # its request timed out
    assert fast.result(timeout=5).spec.value == "a+"
    assert not slow.done()  # still running in its own thread
    # a second stuck compile: max_abandoned (1) reached, so it keeps its slot
    slow2 = compiler.submit(GrammarSpec.from_regex("slow2"))
    compiler.abandon(slow2)
    queued = compiler.submit(GrammarSpec.from_regex("b+"))
    with pytest.raises(FutureTimeout):
        queued.result(timeout=0.2)
    backend.release.set()
    assert slow.result(timeout=5) and slow2.result(timeout=5) and queued.result(timeout=5)
    compiler.shutdown(wait=True)


def test_shutdown_cancels_queued_compiles():
    backend = SlowOnlyBackend()
    compiler = GrammarCompiler(backend, max_workers=1)
    slow = compiler.submit(GrammarSpec.from_regex("slow"))
    queued = compiler.submit(GrammarSpec.from_regex("a+"))
    compiler.shutdown()
    assert queued.cancelled()
    backend.release.set()
    assert slow.result(timeout=5)


def test_lru_eviction_and_parallel_compiles():
    backend = FakeBackend(delay=0.2)
    compiler = GrammarCompiler(backend, max_workers=4, cache_size=2)
    start = time.monotonic()
    futs = [compiler.submit(GrammarSpec.from_regex(f"x{i}")) for i in range(4)]
    assert all(f.result(timeout=5) for f in futs)
    assert time.monotonic() - start < 0.7  # ran in parallel (4 x 0.2 s serially)
    assert not compiler.cached(GrammarSpec.from_regex("x0")) and compiler.cached(GrammarSpec.from_regex("x3"))


# ---------------------------------------------------------------------------- bitmask
def reference_apply(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    allowed = bitmask_to_bool(bitmask, logits.shape[1])
    return logits.masked_fill(~allowed, float("-inf"))


@pytest.mark.parametrize("B,V,dtype", [(16, 151_936, torch.float32), (3, 1001, torch.float32),
                                       (2, 77, torch.bfloat16), (1, 8, torch.float32)])
def test_apply_bitmask_matches_reference(B, V, dtype):
    gen = torch.Generator().manual_seed(V)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (B, (V + 31) // 32), dtype=torch.int32, generator=gen)
    logits = torch.randn(B, V, generator=gen).to(dtype)
    expected = reference_apply(logits, bitmask)
    apply_bitmask_(logits, bitmask)
    assert torch.equal(logits, expected)


def test_apply_bitmask_on_a_strided_view_and_allocation():
    full = torch.randn(4, 200)
    view = full[:, :100]  # rows are not contiguous, the last dim is
    bitmask = allocate_bitmask(4, 100)
    assert bitmask.shape == (4, 4) and bitmask.dtype == torch.int32 and bool((bitmask == -1).all())
    bitmask[1].zero_()
    bitmask[1, 3] = 1 << 2  # only token 98 allowed in row 1
    before = full.clone()
    apply_bitmask_(view, bitmask)
    assert torch.equal(full[[0, 2, 3]], before[[0, 2, 3]])
    assert torch.isinf(full[1, :98]).all() and full[1, 98] == before[1, 98] and torch.isinf(full[1, 99])
    assert torch.equal(full[:, 100:], before[:, 100:])


def test_apply_bitmask_to_selected_rows():
    logits = torch.randn(5, 64)
    bitmask = torch.zeros(2, 2, dtype=torch.int32)
    bitmask[:, 0] = 1  # only token 0
    before = logits.clone()
    apply_bitmask_(logits, bitmask, rows=[1, 3])
    assert torch.equal(logits[[0, 2, 4]], before[[0, 2, 4]])
    assert torch.equal(logits[[1, 3], 0], before[[1, 3], 0]) and torch.isinf(logits[[1, 3], 1:]).all()


def test_pack_bool_mask_round_trip():
    mask = torch.rand(3, 96) < 0.5
    assert torch.equal(bitmask_to_bool(pack_bool_mask(mask), 96), mask)


# ---------------------------------------------------------------------------- vocabulary
def test_vocab_bytes_and_clamp(tokenizer):
    vocab = TokenVocab.get(tokenizer, 151_936, [151645, 151643])
    assert TokenVocab.get(tokenizer, 151_936, [151645, 151643]) is vocab  # cached
    assert vocab.tokenizer_size == 151_665 and vocab.added_ids == frozenset(range(151_643, 151_665))
    assert vocab.token_bytes[220] == b" " and vocab.token_bytes[151657] == b"<tool_call>"
    for text in ("héllo wörld", "日本語のテキスト", "\n\t{\"a\": 1}"):  # exact bytes, split UTF-8 included
        ids = tokenizer.encode(text)
        assert b"".join(vocab.token_bytes[t] for t in ids) == text.encode()
    bitmask = allocate_bitmask(2, 151_936)
    vocab.clamp_row_(bitmask, 1, frozenset({151657}))
    allowed = bitmask_to_bool(bitmask, 151_936)
    assert allowed[0].all()  # other rows untouched
    ids = set(torch.nonzero(allowed[1]).flatten().tolist())
    assert ids == set(range(151_643)) | {151645, 151643, 151657}
