"""Tests for runtime.engine.sampler: distributions, greedy, penalties, seeds, masks, logprobs."""

from __future__ import annotations

import pytest
import torch

from runtime.core import SamplingParams as SP
from runtime.engine import sampler
from runtime.engine.sampler import SamplingBatch, apply_penalties, compute_logprobs, sample

try:
    from scipy.stats import chisquare
except ImportError:
    chisquare = None


def chi2_pvalue_torch(observed: list[float], expected: list[float]) -> float:
    """Pearson chi-square p-value without scipy: the regularized upper incomplete gamma."""
    obs = torch.tensor(observed, dtype=torch.float64)
    exp = torch.tensor(expected, dtype=torch.float64)
    stat = ((obs - exp) ** 2 / exp).sum()
    df = torch.tensor((len(observed) - 1) / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(df, stat / 2))


def chi2_pvalue(observed: list[float], expected: list[float]) -> float:
    if chisquare is None:
        return chi2_pvalue_torch(observed, expected)
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.skipif(chisquare is None, reason="scipy not installed")
def test_chi2_fallback_matches_scipy():
    obs, exp = [30.0, 50.0, 20.0, 100.0], [40.0, 45.0, 25.0, 90.0]
    assert chi2_pvalue_torch(obs, exp) == pytest.approx(chi2_pvalue(obs, exp), rel=1e-9)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.double() - b.double()).abs().max())


# ----------------------------------------------------------------------------- reference


def reference_probs(row: torch.Tensor, temperature: float, top_k: int, top_p: float,
                    min_p: float) -> torch.Tensor:
    """Expected next-token distribution, computed plainly in float64 with Python loops:
    softmax(row / T); keep the top_k most likely; of those keep the smallest prefix whose
    renormalized mass reaches top_p; drop tokens with p < min_p * p_max; renormalize."""
    p = torch.softmax(row.double() / temperature, dim=-1)
    order = [t for t in torch.argsort(p, descending=True).tolist() if p[t] > 0]
    kept = order[:top_k] if top_k > 0 else order
    total = sum(float(p[t]) for t in kept)
    nucleus, acc = [], 0.0
    for t in kept:
        if top_p < 1.0 and acc >= top_p * total:
            break
        nucleus.append(t)
        acc += float(p[t])
    p_max = float(p[order[0]])
    final = [t for t in nucleus if float(p[t]) >= min_p * p_max]
    out = torch.zeros_like(p)
    out[final] = p[final]
    return out / out.sum()


def draw(row: torch.Tensor, params: SP, n: int, chunk: int = 10000) -> torch.Tensor:
    """n unseeded samples of one logits row [V] (the row repeated down the batch) -> [n]."""
    out = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        batch = SamplingBatch.build([params] * m, [[] for _ in range(m)])
        out.append(sample(row.expand(m, -1), batch))
    return torch.cat(out)


def assert_matches(tokens: torch.Tensor, expected: torch.Tensor) -> None:
    """Excluded tokens never appear, and a chi-square test on the rest (p > 1e-3)."""
    n = len(tokens)
    counts = torch.bincount(tokens, minlength=len(expected)).double()
    excluded = expected == 0
    assert counts[excluded].sum() == 0, f"excluded tokens sampled: {counts[excluded].nonzero()}"
    exp_counts = expected * n
    big = exp_counts >= 5  # pool the rare tokens into one bin so the test stays valid
    obs, exp = counts[big].tolist(), exp_counts[big].tolist()
    rare = (~big) & ~excluded
    if rare.any():
        obs.append(float(counts[rare].sum()))
        exp.append(float(exp_counts[rare].sum()))
    assert len(obs) >= 2
    pvalue = chi2_pvalue(obs, exp)
    assert pvalue > 1e-3, f"chi-square p-value {pvalue:.2e}"


V_TEST = 600  # two blocks of 512 columns, the last one partial


def sparse_logits(seed: int = 0) -> torch.Tensor:
    """50 live tokens spread over the vocab (one in the partial last block), rest -inf."""
    g = torch.Generator().manual_seed(seed)
    row = torch.full((V_TEST,), float("-inf"))
    live = torch.randperm(V_TEST - 1, generator=g)[:49].tolist() + [V_TEST - 1]
    row[live] = torch.randn(50, generator=g) * 1.5
    return row


def dense_logits(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V_TEST, generator=g)


SMALL = {"_TOPK_LADDER": (8, 64), "_TOPK_BLOCK": 4}  # candidate search at test scale

CASES = [
    # (logits, params, sampler constants to override)
    ("dense", SP(temperature=1.0), {}),
    ("sparse", SP(temperature=0.5), {}),
    ("sparse", SP(temperature=2.0, top_k=7), {}),
    ("sparse", SP(temperature=2.0, top_k=7), SMALL),  # top-k over pruned column blocks
    ("sparse", SP(temperature=1.0, top_p=0.7), {}),
    ("sparse", SP(temperature=1.0, top_p=0.7), SMALL),
    ("sparse", SP(temperature=0.8, min_p=0.2), {}),
    ("sparse", SP(temperature=1.3, top_k=30, top_p=0.9, min_p=0.05), {}),
    ("dense", SP(temperature=1.0, top_p=0.6, min_p=0.3), SMALL),  # retried with larger K
    ("dense", SP(temperature=0.7, top_k=300, top_p=0.95), {}),  # top_k > first K
]


@pytest.mark.parametrize("kind,params,overrides", CASES)
def test_distribution_matches_reference(kind, params, overrides, monkeypatch):
    for name, value in overrides.items():
        monkeypatch.setattr(sampler, name, value)
    row = sparse_logits() if kind == "sparse" else dense_logits()
    torch.manual_seed(123)
    tokens = draw(row, params, 20000 if kind == "sparse" else 10000)
    expected = reference_probs(row, params.temperature, params.top_k, params.top_p, params.min_p)
    assert_matches(tokens, expected)


def test_heterogeneous_batch_rows_follow_their_own_distributions(monkeypatch):
    """Rows with different logits and parameters, interleaved, leave the candidate
    search at different steps; each row group must still match its reference."""
    for name, value in SMALL.items():
        monkeypatch.setattr(sampler, name, value)
    groups = [(sparse_logits(2), SP(temperature=1.0, top_p=0.3)),  # done at K = 8
              (dense_logits(3), SP(temperature=1.0, top_p=0.9)),  # ~400 tokens: full sort
              (dense_logits(4), SP(temperature=0.9)),  # no truncation
              (dense_logits(5), SP(temperature=1.0, min_p=0.1))]  # min-p alone: a mask
    n = 4000
    logits = torch.stack([row for row, _ in groups]).repeat(n, 1)  # [4n, V], groups interleaved
    params = [p for _, p in groups] * n
    torch.manual_seed(9)
    tokens = sample(logits, SamplingBatch.build(params, [[] for _ in params]))
    for g, (row, p) in enumerate(groups):
        expected = reference_probs(row, p.temperature, p.top_k, p.top_p, p.min_p)
        assert_matches(tokens[g::len(groups)], expected)


@pytest.mark.parametrize("V,K", [(20000, 5), (20000, 40), (5000, 3), (100_003, 64), (700, 1)])
def test_pruned_topk_equals_topk(V, K):
    g = torch.Generator().manual_seed(V + K)
    w = torch.randn(6, V, generator=g) * 2
    w[0] = 0.0  # all tied
    w[1, -3:] = 100.0  # maxima in the partial last block
    w[2, ::97] = 7.5  # many ties
    w[3, : V // 2] = float("-inf")
    vals, cols = sampler._topk(w, K)
    assert torch.equal(vals, w.topk(K, dim=-1).values)
    assert torch.equal(w.gather(1, cols), vals)
    assert all(len(set(r)) == K for r in cols.tolist())  # no column twice


def test_seeded_rows_follow_the_same_distribution():
    row = sparse_logits(seed=5)
    params = [SP(temperature=1.2, top_p=0.9, sampling_seed=s) for s in range(2000)]
    batch = SamplingBatch.build(params, [[] for _ in params])
    tokens = sample(row.expand(len(params), -1), batch)
    assert_matches(tokens, reference_probs(row, 1.2, -1, 0.9, 0.0))


def test_chi_square_check_can_fail():
    row = sparse_logits()
    tokens = draw(row, SP(temperature=1.0), 20000)
    with pytest.raises(AssertionError):  # the T=1 draw is not the T=0.8 distribution
        assert_matches(tokens, reference_probs(row, 0.8, -1, 1.0, 0.0))


# ----------------------------------------------------------------------------- greedy


# 8191 and 10007 are prime (a ragged last block); 151,936 splits into 128 blocks of 1187
@pytest.mark.parametrize("V", [1, 7, 511, 512, 513, 1500, 4096, 8191, 10007, 151_936])
def test_blocked_argmax_equals_torch_argmax(V):
    g = torch.Generator().manual_seed(V)
    x = torch.randint(-3, 4, (16, V), generator=g).float()  # many ties: first index wins
    x[0] = -5.0
    x[1, -1] = 10.0
    x[2, V // 2] = 10.0
    x[2, -1] = 10.0
    assert torch.equal(sampler._argmax(x), x.argmax(-1))
    assert torch.equal(sampler._argmax(x[:, : max(1, V // 2)]), x[:, : max(1, V // 2)].argmax(-1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_greedy_on_half_precision_logits_equals_argmax_of_their_fp32_cast(dtype):
    """Plain-greedy decode steps take the argmax of bf16/fp16 logits directly; the fp32
    cast is exact and monotonic, so the token (first maximum on ties) is the same."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(8, 151_936, generator=g) * 4).to(dtype)  # ties are common in bf16
    x[0, 7] = x[0, 150_000] = x[0].max()  # an exact tie: the first index wins
    x[1] = -x[1].abs()  # no positive value: the int16 shortcut does not apply
    x[2] = -x[2].abs()
    x[2, 9] = x[2, 99] = 0.0
    x[2, 5] = -0.0  # -0.0 == 0.0: the first of the three zeros wins
    x[3] = 0.0
    x[4, :100] = float("-inf")
    assert torch.equal(sampler.greedy_tokens(x), x.float().argmax(-1))
    assert sampler.greedy_tokens(x)[[0, 2, 3]].tolist() == [7, 5, 0]


def test_greedy_rows_are_argmax_in_a_mixed_batch():
    torch.manual_seed(0)
    B, V = 12, 3000
    logits = torch.randn(B, V) * 3
    logits[0, 100] = logits[0, 2900] = 50.0  # tie: the first index wins
    params = [SP(temperature=0.0) if i % 3 == 0 else
              SP(temperature=1.5, top_k=1) if i % 3 == 1 else
              SP(temperature=1.5, top_p=0.9, sampling_seed=i) for i in range(B)]
    batch = SamplingBatch.build(params, [[] for _ in range(B)])
    assert not batch.is_all_greedy
    greedy = [i for i in range(B) if i % 3 != 2]
    for _ in range(5):
        out = sample(logits, batch)
        assert torch.equal(out[greedy], logits.argmax(-1)[greedy])
    assert int(out[0]) == 100


def test_all_greedy_fast_path_and_penalized_greedy():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]])
    batch = SamplingBatch.build([SP(temperature=0.0)] * 2, [[], []])
    assert batch.is_all_greedy and not batch.needs_penalties
    assert sample(logits, batch).tolist() == [1, 2]
    # a presence penalty on token 1 drops it below token 2
    batch = SamplingBatch.build([SP(temperature=0.0, presence_penalty=1.5)] * 2, [[1], []])
    assert sample(logits, batch).tolist() == [2, 2]


# ----------------------------------------------------------------------------- penalties


def test_penalties_hand_made():
    logits = torch.tensor([[2.0, -1.0, 0.5, 4.0, -2.0, 1.0],
                           [2.0, -1.0, 0.5, 4.0, -2.0, 1.0]])
    params = [SP(frequency_penalty=0.5, presence_penalty=0.25, repetition_penalty=2.0), SP()]
    batch = SamplingBatch.build(params, [[3, 3, 1], [3, 1]], prompt_ids=[[2, 5], [0]])
    assert batch.needs_penalties
    apply_penalties(logits, batch)
    # token 1: output x1, -1 -> -1*2 = -2 -> -2 - 0.5 - 0.25;  token 2: prompt, 0.5 / 2
    # token 3: output x2, 4 -> 4/2 = 2 -> 2 - 2*0.5 - 0.25;    token 5: prompt, 1 / 2
    assert logits[0].tolist() == [2.0, -2.75, 0.25, 0.75, -2.0, 0.5]
    assert logits[1].tolist() == [2.0, -1.0, 0.5, 4.0, -2.0, 1.0]  # no penalties: untouched


@pytest.mark.parametrize("seed", range(3))
def test_penalties_match_formulas(seed):
    g = torch.Generator().manual_seed(seed)
    B, V = 5, 40
    logits = torch.randn(B, V, generator=g) * 3
    outs = [torch.randint(0, V, (int(n),), generator=g).tolist()
            for n in torch.randint(0, 30, (B,), generator=g)]
    prompts = [torch.randint(0, V, (10,), generator=g).tolist() for _ in range(B)]
    # frequency, presence in [-2, 2); repetition in [0.1, 2.1)
    pens = torch.rand(B, 3, generator=g) * torch.tensor([4.0, 4.0, 2.0]) - torch.tensor([2.0, 2.0, -0.1])
    params = [SP(frequency_penalty=f, presence_penalty=p, repetition_penalty=r)
              for f, p, r in pens.tolist()]
    batch = SamplingBatch.build(params, outs, prompt_ids=prompts)
    expected = logits.double().clone()
    for i, sp in enumerate(params):
        for t in range(V):
            x = float(expected[i, t])
            if t in outs[i] or t in prompts[i]:
                x = x / sp.repetition_penalty if x > 0 else x * sp.repetition_penalty
            c = outs[i].count(t)
            x -= sp.frequency_penalty * c + sp.presence_penalty * (c > 0)
            expected[i, t] = x
    apply_penalties(logits, batch)
    assert max_abs_diff(logits.double(), expected) <= 1e-5


def test_penalties_in_sample_follow_their_rows():
    torch.manual_seed(6)
    B, V = 8, 50
    logits = torch.randn(B, V) * 0.5
    top = logits.argmax(-1).tolist()
    # every row penalizes its own favourite token (greedy rows) or 5 copies of it (sampled)
    params = [SP(temperature=0.0, presence_penalty=2.0) if i % 2 else
              SP(temperature=1.0, frequency_penalty=2.0, sampling_seed=i if i % 4 == 0 else None)
              for i in range(B)]
    outs = [[top[i]] if i % 2 else [top[i]] * 5 for i in range(B)]
    batch = SamplingBatch.build(params, outs)
    expected = logits.clone()
    apply_penalties(expected, batch)
    greedy = list(range(1, B, 2))
    for _ in range(20):
        out = sample(logits, batch)
        assert torch.equal(out[greedy], expected.argmax(-1)[greedy])
        assert all(out[i] != top[i] for i in range(B))


# ----------------------------------------------------------------------------- seeds


def test_seeded_token_independent_of_batch_companions_and_position():
    g = torch.Generator().manual_seed(7)
    V = 2000
    row = torch.randn(V, generator=g)
    for target in (SP(temperature=1.0, sampling_seed=1234),
                   SP(temperature=0.9, top_p=0.8, min_p=0.01, sampling_seed=-5)):
        tokens = []
        for step in range(30):
            results = set()
            for trial in range(3):
                B = 3 + trial * 2
                logits = torch.randn(B, V, generator=g)
                pos = (trial * 2) % B
                logits[pos] = row
                params = [SP(temperature=0.0), SP(temperature=1.0, sampling_seed=99 + trial),
                          SP(temperature=1.5, top_k=5)] + [SP(temperature=0.7)] * (B - 3)
                params.insert(pos, target)
                params = params[:B]
                outs = [[0] * (step + k) for k in range(B)]
                outs[pos] = [0] * step  # seed_step = step
                torch.manual_seed(trial)  # the global RNG must not matter
                results.add(int(sample(logits, SamplingBatch.build(params, outs))[pos]))
            assert len(results) == 1, f"step {step}: {results}"
            tokens.append(results.pop())
        assert len(set(tokens)) >= 10  # different steps draw different tokens


def test_different_seeds_give_different_tokens():
    row = torch.zeros(1000)
    params = [SP(temperature=1.0, sampling_seed=s) for s in range(40)]
    out = sample(row.expand(40, -1), SamplingBatch.build(params, [[] for _ in params]))
    assert len(set(out.tolist())) >= 20


# ----------------------------------------------------------------------------- bans and masks


def test_banned_tokens_and_vocab_mask_never_sampled():
    torch.manual_seed(3)
    B, V = 64, 700
    logits = torch.randn(B, V)
    logits[:, 5] = 30.0  # the favourite token of every row is banned
    banned = [[5, 6, 7] + [i] for i in range(B)]
    mask = torch.rand(B, V) < 0.3
    mask[:, 5] = True
    mask[B - 1] = False
    mask[B - 1, 123] = True  # only one token allowed
    kinds = [SP(temperature=0.0), SP(temperature=1.0), SP(temperature=3.0, top_k=50),
             SP(temperature=2.0, top_p=0.95), SP(temperature=2.0, min_p=0.5),
             SP(temperature=1.0, sampling_seed=1)]
    params = [kinds[i % len(kinds)] for i in range(B)]
    batch = SamplingBatch.build(params, [[] for _ in range(B)], banned_token_ids=banned)
    allowed = mask.clone()
    for i, ids in enumerate(banned):
        allowed[i, ids] = False
    masked = logits.masked_fill(~allowed, float("-inf"))
    for _ in range(20):
        out = sample(logits, batch, vocab_mask=mask)
        assert allowed[torch.arange(B), out].all()
        assert int(out[B - 1]) == 123
        greedy = [i for i in range(B) if i % len(kinds) == 0]
        assert torch.equal(out[greedy], masked.argmax(-1)[greedy])
    # bans alone
    out = sample(logits, batch)
    assert all(t not in banned[i] for i, t in enumerate(out.tolist()))


def test_sample_does_not_modify_logits():
    torch.manual_seed(4)
    logits = torch.randn(6, 900)
    before = logits.clone()
    params = [SP(temperature=1.0, top_p=0.9, frequency_penalty=1.0, repetition_penalty=1.3),
              SP(temperature=0.0), SP(temperature=0.5, sampling_seed=3), SP(temperature=1.0),
              SP(temperature=1.0, min_p=0.1), SP(temperature=2.0, top_k=3)]
    for b in (SamplingBatch.build(params, [[1, 2, 2]] * 6, banned_token_ids=[[0]] * 6),
              SamplingBatch.build([SP(temperature=1.0)] * 6, [[]] * 6)):
        sample(logits, b, vocab_mask=torch.rand(6, 900) < 0.5)
        sample(logits, b)
        assert torch.equal(logits, before)


# ----------------------------------------------------------------------------- build / logprobs


def test_build():
    params = [SP(temperature=0.0), SP(temperature=0.7, top_k=1), SP(temperature=1e-9),
              SP(temperature=0.7, top_k=20, top_p=0.5, min_p=0.1, sampling_seed=3)]
    b = SamplingBatch.build(params, [[], [1], [1, 2], [1, 2, 3]])
    assert b.temperatures.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.7])
    assert b.top_ks.dtype == torch.int64 and b.top_ks.tolist() == [-1, 1, -1, 20]
    assert b.seeds == [None, None, None, 3] and b.seed_steps == [0, 1, 2, 3]
    assert not b.is_all_greedy and not b.needs_penalties
    assert b.banned_token_ids == [[]] * 4
    assert SamplingBatch.build(params[:3], [[]] * 3).is_all_greedy


@pytest.mark.parametrize("V,top_n", [(1000, 5), (5000, 5), (5000, 20)])
def test_compute_logprobs(V, top_n):
    torch.manual_seed(5)
    logits = torch.randn(6, V) * 5
    ids = torch.randint(0, V, (6,))
    ref = torch.log_softmax(logits, dim=-1)
    chosen, vals, top = compute_logprobs(logits, ids, top_n)
    assert max_abs_diff(chosen, ref[torch.arange(6), ids]) <= 1e-6
    assert vals.shape == (6, top_n) and top.shape == (6, top_n)
    assert (vals[:, :-1] >= vals[:, 1:]).all()  # sorted, best first
    assert max_abs_diff(vals, ref.gather(1, top)) <= 1e-6
    assert max_abs_diff(vals, ref.topk(top_n, dim=-1).values) <= 1e-6
    chosen0, v0, t0 = compute_logprobs(logits, ids, 0)
    assert v0 is None and t0 is None
    assert torch.equal(chosen0, chosen)
