"""Speculative decoding parts: draft lookups against brute force, the adaptive and batch
limits, and the verification rule against known distributions (chi-square)."""

import random

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from runtime.core import Req, SamplingParams
from runtime.engine.sampler import SamplingBatch, sample, sampling_probs
from runtime.engine.speculative import STEP_TOKEN_BUDGET, Drafter, NgramIndex, SpecState, SuffixIndex
from runtime.engine.verify import accept_greedy, accept_sampled


def brute_lookup(seq: list[int], sizes, k: int) -> list[int]:
    """The continuation after the latest earlier occurrence of the longest matching suffix n-gram."""
    for n in sizes:
        if len(seq) < n:
            continue
        gram = seq[-n:]
        for at in range(len(seq) - 1, n - 1, -1):  # at = position after the occurrence; at < len(seq)
            if seq[at - n:at] == gram:
                return seq[at:at + k]
    return []


@pytest.mark.parametrize("seed", range(5))
def test_ngram_lookup_matches_brute_force(seed):
    rng = random.Random(seed)
    index = NgramIndex()
    seq = []
    for _ in range(300):  # grows like a request: some prompt, then one token at a time
        seq += [rng.randrange(6) for _ in range(rng.choice((1, 1, 1, 7)))]
        index.extend(seq[len(index.tokens):])
        draft, n = index.lookup(seq, 4)
        assert draft == brute_lookup(seq, index.sizes, 4)
        assert (n == 0) == (draft == [])


def test_suffix_index_finds_earlier_outputs_and_forgets_old_ones():
    index = SuffixIndex(max_tokens=40)
    context = list(range(100, 120))
    index.add(context, [1, 2, 3, 4, 5, 6, 7])
    assert index.lookup(context, 4) == ([1, 2, 3, 4], 8)  # the context alone predicts the output
    assert index.lookup([9, 9] + context[-5:] + [1, 2], 3) == ([3, 4, 5], 7)
    assert index.lookup([1, 2], 3) == ([], 0)  # too short a match to trust across requests
    for i in range(10):
        index.add([200 + i] * 8, [50 + i] * 10)
    assert index.num_tokens <= 40 + 18
    assert index.lookup(context, 4) == ([], 0)  # evicted


def make_req(output, max_new=64, **params):
    req = Req(rid="r", origin_input_ids=[5, 6, 7, 8, 5, 6, 7], sampling_params=SamplingParams(max_new_tokens=max_new,
                                                                                              **params))
    req.output_ids = list(output)
    return req


def test_drafter_follows_acceptance_and_the_step_budget():
    drafter = Drafter("ngram", 6, jump_forward=False, tokenizer_of=None)
    req = make_req([9, 5, 6])
    # 5 6 7 8 5 6 7 9 5 6: the latest earlier "5 6" is followed by "7 9 5 6"
    assert drafter.propose([req], 4096) == [[7, 9, 5, 6]]
    req.spec.update(drafted=4, accepted=1, max_len=6)
    assert drafter.propose([req], 4096) == [[7, 9, 5]]  # halved: 6 -> 3
    for skipped in (1, 3):  # misses: skip 1, then 3 steps
        req.spec.update(drafted=2, accepted=0, max_len=6)
        assert [drafter.propose([req], 4096) for _ in range(skipped)] == [[[]]] * skipped
        assert drafter.propose([req], 4096) == [[7]]
    assert drafter.propose([make_req([9, 5, 6], max_new=5)], 4096) == [[7]]  # room: max_new - 3 - 1
    many = [make_req([9, 5, 6]) for _ in range(STEP_TOKEN_BUDGET)]
    assert not any(drafter.propose(many, 4096))  # a full batch verifies no drafts
    some = [make_req([9, 5, 6]) for _ in range(STEP_TOKEN_BUDGET // 2)]
    assert sum(map(len, drafter.propose(some, 4096))) == STEP_TOKEN_BUDGET - len(some)


@pytest.mark.parametrize("per_token_ms,batch,expect_drafts", [(0.5, 1, 6), (0.5, 8, 8 * 3), (8.0, 8, 0)])
def test_drafts_only_where_they_pay_for_the_step(per_token_ms, batch, expect_drafts):
    """With measured step costs, a draft token goes in while its chance of being kept
    (alpha ** j) beats its share of the step, and a step verifies only if it beats decoding."""
    drafter = Drafter("ngram", 6, jump_forward=False, tokenizer_of=None)
    for _ in range(3):  # decode: 20 ms + 0.5 ms per request; verify: 20 ms + per_token_ms per token
        drafter.costs.observe(False, batch, batch, 0.020 + 0.0005 * batch)
        for tokens in (batch + 1, batch + 4, batch + 9):
            drafter.costs.observe(True, batch, tokens, 0.020 + 0.0005 * batch + per_token_ms / 1000 * (tokens - batch))
    reqs = [make_req([9, 5, 6]) for _ in range(batch)]
    drafter.propose(reqs, 4096)  # creates each request's state
    for r in reqs:
        r.spec.alpha, r.spec.skip = 0.9, 0
    drafts = drafter.propose(reqs, 4096)
    if batch == 1:
        assert drafts == [[7, 9, 5, 6]]  # batch 1: every candidate token
    else:
        assert sum(map(len, drafts)) <= expect_drafts
        assert (sum(map(len, drafts)) > 0) == (expect_drafts > 0)


def test_spec_state_grows_after_full_accepts():
    state = SpecState(draft_len=2)
    state.update(drafted=2, accepted=2, max_len=5)
    state.update(drafted=4, accepted=4, max_len=5)
    assert (state.draft_len, state.skip, state.num_accepted) == (5, 0, 6)


def test_greedy_accepts_the_longest_matching_prefix():
    assert accept_greedy([7, 8, 1, 4], [7, 8, 9]) == [7, 8, 1]
    assert accept_greedy([7, 8, 9, 4], [7, 8, 9]) == [7, 8, 9, 4]
    assert accept_greedy([3], []) == [3]
    assert accept_greedy([3, 8], [7]) == [3]


def expected(p: torch.Tensor, n: float) -> np.ndarray:
    p = p.double().numpy()
    return p / p.sum() * n


def test_rejection_rule_keeps_each_position_distribution():
    """A 'model' with known next-token distributions over a 5-token vocabulary: p0 after
    the context, p1 after draft token 1, p2 after draft tokens 1, 2. Whatever the draft,
    the first emitted token must follow p0 and the second, given the first was token 1,
    must follow p1 (chi-square, 20k draws)."""
    p = torch.tensor([[0.1, 0.5, 0.2, 0.15, 0.05],
                      [0.3, 0.05, 0.4, 0.05, 0.2],
                      [0.2, 0.2, 0.2, 0.2, 0.2]])
    gen = torch.Generator().manual_seed(0)
    for draft in ([1, 2], [4, 0]):  # a likely draft and an unlikely one
        firsts, seconds = np.zeros(5), np.zeros(5)
        for _ in range(20_000):
            out = accept_sampled(p, draft, gen)
            assert 1 <= len(out) <= 3 and out[:-1] == draft[:len(out) - 1]
            firsts[out[0]] += 1
            if out[0] == 1 and len(out) > 1:
                seconds[out[1]] += 1
        assert chisquare(firsts, expected(p[0], firsts.sum())).pvalue > 1e-3
        if draft[0] == 1:
            assert chisquare(seconds, expected(p[1], seconds.sum())).pvalue > 1e-3


@pytest.mark.parametrize("params", [dict(temperature=0.7, top_k=20), dict(temperature=1.0, top_p=0.8),
                                    dict(temperature=1.3, min_p=0.05), dict(temperature=0.9, top_k=50, top_p=0.7)])
def test_sampling_probs_is_what_sample_draws_from(params):
    """The verifier's target distribution equals the sampler's (chi-square over its draws)."""
    torch.manual_seed(1)
    logits = torch.randn(1, 300) * 3
    sb = SamplingBatch.build([SamplingParams(**params)], [[]])
    probs = sampling_probs(logits.clone(), sb)[0]
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    n = 20_000
    draws = sample(logits.expand(n, -1).contiguous(), SamplingBatch.build([SamplingParams(**params)] * n, [[]] * n))
    counts = torch.bincount(draws, minlength=300).double().numpy()
    support = probs.numpy() > 0
    assert counts[~support].sum() == 0  # never draws a token the target excludes
    assert chisquare(counts[support], expected(probs[support], n)).pvalue > 1e-3


def test_sampling_probs_is_one_hot_for_greedy_rows():
    logits = torch.tensor([[0.1, 2.0, 1.0], [3.0, 0.0, 1.0]])
    sb = SamplingBatch.build([SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)], [[], []])
    probs = sampling_probs(logits, sb)
    assert probs[0].tolist() == [0.0, 1.0, 0.0]
    assert probs[1].tolist() == pytest.approx(torch.softmax(logits[1], -1).tolist())


def test_a_closed_batch_drafts_only_for_its_longest_requests():
    """Nothing waits for a slot and the step is mostly per-token work: the batch ends with
    its longest requests, so only they draft, all as deep, and only while all of them are
    likely to accept."""
    drafter = Drafter("ngram", 6, jump_forward=False, tokenizer_of=None)
    batch = 4
    for _ in range(4):  # every step: 4 ms + 4 ms per token
        drafter.costs.observe(False, batch, batch, 0.004 + 0.004 * batch)
        for tokens in (batch + 1, batch + 4, batch + 9):
            drafter.costs.observe(True, batch, tokens, 0.004 + 0.004 * tokens)
    reqs = [make_req([9, 5, 6], max_new=64) for _ in range(3)] + [make_req([9, 5, 6], max_new=20)]

    def propose(closed=True, alphas=(0.9, 0.9, 0.9, 0.9)):
        for r, alpha in zip(reqs, alphas):
            if r.spec is not None:
                r.spec.alpha, r.spec.skip = alpha, 0
        return drafter.propose(reqs, 4096, closed)

    propose()  # creates each request's state
    drafts = propose()
    assert drafts[3] == [] and drafts[0] and drafts[0] == drafts[1] == drafts[2]
    unlikely = (0.9, 0.05, 0.9, 0.9)  # one longest request rarely accepts: the batch would not end sooner
    assert not any(propose(alphas=unlikely))
    assert any(propose(closed=False, alphas=unlikely))  # with a queue, the others' early tokens count
