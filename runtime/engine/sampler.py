"""Batched next-token sampling for requests with different sampling parameters.

Shapes: B = batch rows, V = vocab columns; logits are float32 [B, V].

`sample` runs, per row: penalties -> banned tokens -> grammar mask -> then either argmax
(greedy rows) or temperature -> top-k -> top-p -> min-p -> one random draw. The rows are
copied once, grouped (greedy, unseeded, seeded), so every group is a slice of that copy.

How sampled rows are drawn (`_sample_rows`), vectorized over the rows:
  * probs = softmax(logits / T)  [R, V].
  * rows with top-k / top-p / min-p look only at their K most likely tokens: torch.topk,
    for small K on just the column blocks with the largest maxima; K = max(64, top_k).
    Rows whose kept set does not fit in K are retried with K = 8192, then a full sort
    (min-p alone instead falls back to a full-vocab mask).
  * the draw is an inverse CDF with two uniforms per row: pick a block of `_BLOCK` columns
    by its mass, then a column inside that block by its mass. This needs no full-vocab
    cumsum and no per-token noise: drawing V exponentials (Gumbel / exponential race)
    costs ~3 ms per row of 151,936 on CPU, two uniforms cost nothing.

Reproducibility: a row with a sampling_seed gets its two uniforms from a torch.Generator
seeded by a hash of (seed, seed_step) and is sampled on its own ([1, V]), so its token
depends only on its logits row, seed and step, not on its batch companions or position.
Rows without a seed share one draw from the global RNG through the same code path.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass

import torch

from runtime.core import SamplingParams

_GREEDY_TEMPERATURE = 1e-6  # temperatures below this are treated as greedy (as SGLang does)
_BLOCK = 512  # columns per block in the two-level argmax and inverse CDF
_TOPK_BLOCK = 64  # columns per block when pruning the vocab for a small top-K
_TOPK_LADDER = (64, 8192)  # candidate counts tried for truncated rows before a full sort
_NEG_INF = float("-inf")


@dataclass
class SamplingBatch:
    """Sampling parameters of B rows, as [B] tensors (CPU) plus per-row lists."""

    temperatures: torch.Tensor  # [B] float32; 0 means greedy
    top_ps: torch.Tensor  # [B] float32 in (0, 1]
    top_ks: torch.Tensor  # [B] int64; values <= 0 mean disabled
    min_ps: torch.Tensor  # [B] float32 in [0, 1]
    frequency_penalties: torch.Tensor  # [B] float32; 0 = off
    presence_penalties: torch.Tensor  # [B] float32; 0 = off
    repetition_penalties: torch.Tensor  # [B] float32; 1 = off
    seeds: list[int | None]  # per-row sampling_seed
    seed_steps: list[int]  # per-row number of tokens generated so far, mixed into the seed
    output_ids: list[list[int]]  # per-row generated tokens so far (penalties)
    banned_token_ids: list[list[int]]  # per-row ids forbidden this step (min_new_tokens)
    prompt_ids: list[list[int]]  # per-row prompt tokens (only read for repetition penalty)
    is_all_greedy: bool
    needs_penalties: bool

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        output_ids: list[list[int]],
        banned_token_ids: list[list[int]] | None = None,
        prompt_ids: list[list[int]] | None = None,
    ) -> "SamplingBatch":
        """Greedy rows (temperature < 1e-6 or top_k == 1) get temperature 0."""
        for name, lists in (("output_ids", output_ids), ("banned_token_ids", banned_token_ids),
                            ("prompt_ids", prompt_ids)):
            if lists is not None and len(lists) != len(params):
                raise ValueError(f"{name} must have one list per row")
        greedy = [_is_greedy(p) for p in params]

        def f32(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32)

        return cls(
            temperatures=f32([0.0 if g else p.temperature for g, p in zip(greedy, params)]),
            top_ps=f32([p.top_p for p in params]),
            top_ks=torch.tensor([p.top_k for p in params], dtype=torch.int64),
            min_ps=f32([p.min_p for p in params]),
            frequency_penalties=f32([p.frequency_penalty for p in params]),
            presence_penalties=f32([p.presence_penalty for p in params]),
            repetition_penalties=f32([p.repetition_penalty for p in params]),
            seeds=[p.sampling_seed for p in params],
            seed_steps=[len(ids) for ids in output_ids],
            output_ids=output_ids,
            banned_token_ids=banned_token_ids or [[] for _ in params],
            prompt_ids=prompt_ids or [[] for _ in params],
            is_all_greedy=all(greedy),
            needs_penalties=any(
                p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
                or p.repetition_penalty != 1.0 for p in params),
        )


def _is_greedy(p: SamplingParams) -> bool:
    return p.is_greedy or p.temperature < _GREEDY_TEMPERATURE


def is_plain_greedy(p: SamplingParams) -> bool:
    """Greedy with no penalties: the token is the argmax of the (grammar-masked) logits."""
    return _is_greedy(p) and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0 \
        and p.repetition_penalty == 1.0


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """[B, V] (any float dtype) -> [B] int64 argmax per row (what `sample` returns for
    plain greedy rows: casting to fp32 first would not change the first maximum)."""
    return _argmax(logits)


# ----------------------------------------------------------------------------- penalties


def _row_token_index(lists: list[list[int]], device: torch.device):
    """Flatten per-row token lists -> (rows [N], token ids [N]) int64."""
    lens = torch.tensor([len(ids) for ids in lists], dtype=torch.int64)
    rows = torch.repeat_interleave(torch.arange(len(lists)), lens)
    toks = torch.tensor(list(itertools.chain.from_iterable(lists)), dtype=torch.int64)
    return rows.to(device), toks.to(device)


def _unique_row_tokens(lists: list[list[int]], vocab: int, device: torch.device):
    """Distinct (row, token) pairs -> (rows [U], tokens [U], counts [U] float32)."""
    rows, toks = _row_token_index(lists, device)
    keys, counts = torch.unique(rows * vocab + toks, return_counts=True)
    return keys // vocab, keys % vocab, counts.float()


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> None:
    """Apply the batch's penalties to `logits` [B, V] in place, touching only seen tokens.

    For row i and a token t (r = repetition_penalty[i]):
      repetition (CTRL style), if t occurs in prompt_ids[i] + output_ids[i]:
          logits[i, t] = logits[i, t] / r   if logits[i, t] > 0
                         logits[i, t] * r   otherwise
      then, with c = number of times t occurs in output_ids[i]:
          logits[i, t] -= frequency_penalty[i] * c + presence_penalty[i] * (c > 0)
    (Repetition before frequency/presence, the order vLLM uses.)
    """
    _penalize(logits, batch, list(range(len(batch.output_ids))))


def _penalize(x: torch.Tensor, batch: SamplingBatch, order: list[int]) -> None:
    """apply_penalties on x [len(order), V], whose row j holds batch row order[j]."""
    V, dev = x.shape[1], x.device
    rep, freq, pres = (batch.repetition_penalties.tolist(), batch.frequency_penalties.tolist(),
                       batch.presence_penalties.tolist())
    rep, freq, pres = [rep[i] for i in order], [freq[i] for i in order], [pres[i] for i in order]

    seen = [batch.prompt_ids[i] + batch.output_ids[i] if r != 1.0 else []
            for i, r in zip(order, rep)]
    if any(seen):
        rows, toks, _ = _unique_row_tokens(seen, V, dev)  # [U] each
        vals = x[rows, toks]  # [U]
        r = torch.tensor(rep, device=dev)[rows]  # [U]
        x[rows, toks] = torch.where(vals > 0, vals / r, vals * r)

    counted = [batch.output_ids[i] if f != 0.0 or p != 0.0 else []
               for i, f, p in zip(order, freq, pres)]
    if any(counted):
        rows, toks, counts = _unique_row_tokens(counted, V, dev)  # [U] each
        f = torch.tensor(freq, device=dev)[rows]  # [U]
        p = torch.tensor(pres, device=dev)[rows]  # [U]
        x[rows, toks] -= f * counts + p


# ----------------------------------------------------------------------------- helpers


def _block_reduce(x: torch.Tensor, op, size: int) -> torch.Tensor:
    """[R, N] -> [R, ceil(N / size)]: op (torch.amax / torch.sum) over each block of columns."""
    R, N = x.shape
    nfull = N // size
    parts = []
    if nfull:
        parts.append(op(x[:, : nfull * size].reshape(R, nfull, size), -1))
    if N % size:
        parts.append(op(x[:, nfull * size:], -1, keepdim=True))
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _block_cols(blocks: torch.Tensor, N: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block ids [R, M] -> their column ids [R, M * size] (clamped to N - 1) and validity."""
    cols = (blocks[..., None] * size + torch.arange(size, device=blocks.device)).flatten(1)
    return cols.clamp(max=N - 1), cols < N


def _argmax(x: torch.Tensor) -> torch.Tensor:
    """[R, N] -> [R] int64, same as x.argmax(-1) (first maximum).

    On CPU torch.argmax is ~8x slower than the value reduction amax, so: amax per block,
    argmax over block maxima (first block holding the maximum), argmax inside that block.
    bf16/fp16 reductions are not vectorized on CPU, but integer ones are: a non-negative
    16-bit float orders like its bits read as int16, and a negative one reads as a
    negative int16, so in every row whose maximum is positive the int16 argmax is the
    float argmax. Rows without a positive value (rare for logits) take the float path.
    """
    if x.device.type != "cpu":
        return x.argmax(-1)
    if x.dtype not in (torch.bfloat16, torch.float16):
        return _blocked_argmax(x)[0]
    best, top_bits = _blocked_argmax(x.view(torch.int16))  # [R] each
    if not bool(top_bits.min() > 0):  # some row's maximum is not the bits of a positive float
        rows = (top_bits <= 0).nonzero().squeeze(1)
        best[rows] = _blocked_argmax(x.index_select(0, rows).float())[0]
    return best


def _blocked_argmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[R, N] -> (first argmax [R] int64, the maximum [R]).

    Kept to few torch ops: after a model forward every distinct op runs cache-cold
    (~20-80 us each on CPU), so the op count matters as much as the bytes read."""
    N = x.shape[1]
    size = _argmax_block_size(N)
    blocks = _block_reduce(x, torch.amax, size).argmax(-1)  # [R] first block holding the max
    cols = blocks[:, None] * size + cached_arange(size, x.device)  # [R, size]
    if N % size:  # ragged last block: clamped duplicates of column N-1 come after it,
        cols.clamp_(max=N - 1)  # so they never win a tie
    maxima, inner = x.gather(1, cols).max(-1)  # [R] each; max(dim) returns the first maximum
    return blocks * size + inner, maxima


@functools.lru_cache(maxsize=16)
def _argmax_block_size(n: int) -> int:
    """Block width for the two-level argmax over n columns: a divisor of n in
    [_BLOCK, 8 * _BLOCK] when there is one (151,936 = 128 * 1187), so that a single
    reshape covers each row, else _BLOCK."""
    return next((s for s in range(_BLOCK, 8 * _BLOCK + 1) if n % s == 0), _BLOCK)


@functools.lru_cache(maxsize=256)
def cached_arange(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A shared torch.arange(n): callers must only read it (one op fewer per step)."""
    return torch.arange(n, device=device)


def _topk(w: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w.topk(K) for w [R, N] -> (values [R, K] descending, columns [R, K]).

    torch.topk costs a pass over all N columns per row; when K is small, first keep the K
    blocks of _TOPK_BLOCK columns with the largest maxima: they hold the K largest values
    (a block holding one of them has a maximum >= the K-th value, so it ranks in the top K).
    """
    R, N = w.shape
    if 8 * K * _TOPK_BLOCK > N:  # pruning only pays off for small K
        return w.topk(K, dim=-1)
    block_max = _block_reduce(w, torch.amax, _TOPK_BLOCK)  # [R, nb]
    blocks = block_max.topk(K, dim=-1).indices  # [R, K]
    cols, valid = _block_cols(blocks, N, _TOPK_BLOCK)  # [R, K * _TOPK_BLOCK]
    cand = w.gather(1, cols).masked_fill_(~valid, _NEG_INF)  # clamped duplicates lose
    vals, j = cand.topk(K, dim=-1)  # [R, K]
    return vals, cols.gather(1, j)


def _sample_weights(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one column per row with probability proportional to w.

    w: [R, N] non-negative weights, each row with some weight > 0.
    u: [R, 2] float64 uniforms in [0, 1): u[:, 0] picks the block, u[:, 1] the column in it.
    Returns [R] int64 column ids; a column with weight 0 is never returned.
    """
    R, N = w.shape
    cum = _block_reduce(w, torch.sum, _BLOCK).double().cumsum(-1)  # [R, nb] running block mass
    target = u[:, :1] * cum[:, -1:]  # [R, 1], < total mass
    blocks = torch.searchsorted(cum, target, right=True).clamp_(max=cum.shape[1] - 1)  # [R, 1]
    cols, valid = _block_cols(blocks, N, _BLOCK)  # [R, _BLOCK]
    inner = (w.gather(1, cols) * valid).double().cumsum(-1)  # [R, _BLOCK]
    target = u[:, 1:] * inner[:, -1:]  # [R, 1]
    j = torch.searchsorted(inner, target, right=True).clamp_(max=_BLOCK - 1)  # [R, 1]
    return cols.gather(1, j).squeeze(1)


def _truncate_sorted(vals, mass, top_ks, top_ps, min_ps, V: int):
    """Which of the K most likely tokens survive top-k, then top-p, then min-p.

    vals: [R, K] probabilities sorted descending; mass: [R] total probability of the row
    (~1); top_ks: [R] int64 in [1, V] (V = off); top_ps, min_ps: [R].
    Returns keep [R, K] (a prefix of each row) and covered [R]: whether the kept set is
    complete within these K candidates (else the caller retries with a larger K).
    """
    R, K = vals.shape
    col = torch.arange(K, device=vals.device)
    keep = col < top_ks[:, None]  # top-k
    cum = (vals * keep).double().cumsum(-1)  # [R, K] mass of the first j+1 kept tokens
    # top-p is relative to the mass left after top-k (its renormalized distribution)
    base = torch.where(top_ks <= K, cum[:, -1], mass.double())  # [R]
    before = cum - vals.double()  # [R, K] mass ranked above column j
    keep &= (before < top_ps.double()[:, None] * base[:, None]) | (top_ps[:, None] >= 1.0)
    keep &= vals >= min_ps[:, None] * vals[:, :1]  # min-p: p >= min_p * p_max
    covered = ~keep[:, -1] | (vals[:, -1] == 0) | (K == V)
    return keep, covered


def _take_rows(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """t[rows]: a view when the rows are consecutive, else a copy."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return t[rows[0]: rows[0] + len(rows)]
    return t.index_select(0, torch.tensor(rows, device=t.device))


def _sample_rows(scaled, top_ks: list[int], top_ps: list[float], min_ps: list[float], u):
    """Sample one token per row. scaled: [R, V] float32 logits / temperature (not modified);
    top_ks, top_ps, min_ps: per-row values; u: [R, 2] float64 uniforms -> [R] int64 ids.
    Fastest when the rows with top-k/top-p/min-p come first (no row copies then)."""
    R, V = scaled.shape
    dev = scaled.device
    probs = torch.softmax(scaled, dim=-1)  # [R, V]
    top_ks = [k if 0 < k < V else V for k in top_ks]  # V means "no top-k"
    ordered = [k < V or p < 1.0 for k, p in zip(top_ks, top_ps)]  # needs tokens in order
    pending = [i for i in range(R) if ordered[i] or min_ps[i] > 0]
    whole_vocab = [i for i in range(R) if not (ordered[i] or min_ps[i] > 0)]
    out = torch.empty(R, dtype=torch.int64, device=dev)

    # Truncated rows: sample among the K most likely tokens, retrying rows whose kept set
    # reaches past K with a larger K; the last try, K = V, is a full sort.
    for ladder_k in (*_TOPK_LADDER, V):
        if ladder_k == V:  # min-p alone never needs a sort: it is a mask, below
            whole_vocab += [i for i in pending if not ordered[i]]
            pending = [i for i in pending if ordered[i]]
        if not pending:
            break
        K = min(V, max([ladder_k] + [top_ks[i] for i in pending if top_ks[i] < V]))
        rows = _take_rows(probs, pending)  # [P, V]
        vals, cols = _topk(rows, K)  # [P, K] each
        keep, covered = _truncate_sorted(
            vals, rows.sum(-1), torch.tensor([top_ks[i] for i in pending], device=dev),
            torch.tensor([top_ps[i] for i in pending], device=dev),
            torch.tensor([min_ps[i] for i in pending], device=dev), V)  # [P, K], [P]
        covered = covered.tolist()
        hit = [j for j, c in enumerate(covered) if c]
        if hit:
            h = torch.tensor(hit, device=dev)
            picked = _sample_weights(vals[h] * keep[h], u[[pending[j] for j in hit]])  # [D]
            out[[pending[j] for j in hit]] = cols[h].gather(1, picked[:, None]).squeeze(1)
        pending = [i for i, c in zip(pending, covered) if not c]

    # No truncation, or min-p keeping too many tokens: draw over the whole vocab.
    if whole_vocab:
        rows = _take_rows(probs, whole_vocab)  # [F, V]
        if any(min_ps[i] > 0 for i in whole_vocab):
            min_p = torch.tensor([min_ps[i] for i in whole_vocab], device=dev)[:, None]
            rows = rows * (rows >= min_p * rows.amax(-1, keepdim=True))
        out[whole_vocab] = _sample_weights(rows, u[whole_vocab])
    return out


def _seed_hash(seed: int, step: int) -> int:
    """A 64-bit generator seed from (sampling_seed, step)."""
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _fill_tokens(x: torch.Tensor, lists: list[list[int]], value: float) -> None:
    """x[i, t] = value for every t in lists[i]; x: [B, V], in place."""
    rows, toks = _row_token_index(lists, x.device)
    x[rows, toks] = value


# ----------------------------------------------------------------------------- public API


def sample(
    logits: torch.Tensor, batch: SamplingBatch, vocab_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Pick the next token of every row. logits: [B, V] (not modified); vocab_mask: optional
    bool [B, V], True = allowed by the grammar. Returns [B] int64 token ids.

    Order: penalties, banned tokens and the vocab mask (both -inf), then argmax for greedy
    rows, or temperature, top-k, top-p (smallest set of the top-k-renormalized probs whose
    mass >= top_p), min-p (drop p < min_p * p_max) and a draw from what is left.
    The caller guarantees every row keeps at least one allowed token (asserted).
    """
    B, V = logits.shape
    x = logits.float()  # [B, V]; the same tensor when logits are already float32
    banned = any(batch.banned_token_ids)
    edits = batch.needs_penalties or banned or vocab_mask is not None
    if batch.is_all_greedy and not edits:
        return _argmax(x)

    # Group the rows: greedy, unseeded (truncated ones first), seeded. Rows are copied once,
    # into that order, so the groups are slices and the edits never touch the caller's logits.
    temps = batch.temperatures.tolist()
    top_ks, top_ps, min_ps = batch.top_ks.tolist(), batch.top_ps.tolist(), batch.min_ps.tolist()
    greedy = [i for i in range(B) if temps[i] == 0.0]
    truncated = [0 < top_ks[i] < V or top_ps[i] < 1.0 or min_ps[i] > 0 for i in range(B)]
    unseeded = sorted((i for i in range(B) if temps[i] != 0.0 and batch.seeds[i] is None),
                      key=lambda i: not truncated[i])
    seeded = [i for i in range(B) if temps[i] != 0.0 and batch.seeds[i] is not None]
    order = greedy + unseeded + seeded
    owned = edits or order != list(range(B))
    if owned:
        order_t = torch.tensor(order, device=x.device)
        x = x.index_select(0, order_t)  # [B, V], row j is batch row order[j]
        if batch.needs_penalties:
            _penalize(x, batch, order)
        if banned:
            _fill_tokens(x, [batch.banned_token_ids[i] for i in order], _NEG_INF)
        if vocab_mask is not None:
            x.masked_fill_(~vocab_mask.index_select(0, order_t), _NEG_INF)
        if edits:
            assert bool((x.amax(-1) > _NEG_INF).all()), "a row has no allowed token"

    G, U = len(greedy), len(unseeded)
    parts = []  # token ids [len(group)] of each group, in `order`
    if greedy:
        parts.append(_argmax(x[:G]))
    if unseeded:
        t = batch.temperatures[unseeded].to(x.device)[:, None]  # [U, 1]
        rows = x[G:G + U]  # [U, V]
        if any(temps[i] != 1.0 for i in unseeded):
            rows = rows.div_(t) if owned else rows / t
        u = torch.rand(U, 2, dtype=torch.float64).to(x.device)
        parts.append(_sample_rows(rows, [top_ks[i] for i in unseeded],
                                  [top_ps[i] for i in unseeded], [min_ps[i] for i in unseeded], u))
    for j, i in enumerate(seeded):  # each alone: its token must not depend on the batch
        g = seeded_generator(batch.seeds[i], batch.seed_steps[i])
        u = torch.rand(1, 2, dtype=torch.float64, generator=g).to(x.device)
        row = x[G + U + j: G + U + j + 1] / temps[i]  # [1, V]
        parts.append(_sample_rows(row, [top_ks[i]], [top_ps[i]], [min_ps[i]], u))
    out = torch.empty(B, dtype=torch.int64, device=x.device)
    out[order] = torch.cat(parts)
    return out


def processed_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """A float32 copy of logits [B, V] with the batch's penalties and banned tokens
    applied: what `sample` works on before the grammar mask and temperature."""
    x = logits.float().clone()
    if batch.needs_penalties:
        _penalize(x, batch, list(range(x.shape[0])))
    if any(batch.banned_token_ids):
        _fill_tokens(x, batch.banned_token_ids, _NEG_INF)
    return x


def sampling_probs(x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """The distribution `sample` draws each row of x [B, V] (processed logits, masked)
    from, as float32 [B, V] probabilities: one-hot at the argmax for greedy rows, else
    softmax(x / T) cut by top-k, top-p and min-p exactly as `_sample_rows` cuts it."""
    B, V = x.shape
    temps = batch.temperatures.to(x.device)
    probs = torch.softmax(x / temps.clamp(min=_GREEDY_TEMPERATURE)[:, None], dim=-1)  # [B, V]
    vals, cols = probs.sort(dim=-1, descending=True)  # [B, V] each
    top_ks = torch.where((batch.top_ks > 0) & (batch.top_ks < V), batch.top_ks, V).to(x.device)
    keep, _ = _truncate_sorted(vals, probs.sum(-1), top_ks, batch.top_ps.to(x.device),
                               batch.min_ps.to(x.device), V)
    out = torch.zeros_like(probs).scatter_(1, cols, vals * keep)
    out /= out.sum(-1, keepdim=True)
    greedy = (batch.temperatures == 0).nonzero().squeeze(1).tolist()
    if greedy:
        out[greedy] = 0.0
        out[greedy, _argmax(x[greedy])] = 1.0
    return out


def seeded_generator(seed: int, step: int) -> torch.Generator:
    """The generator a row with sampling_seed `seed` draws from at output step `step`."""
    return torch.Generator().manual_seed(_seed_hash(seed, step))


def compute_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, top_n: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """log_softmax of the raw logits [B, V] -> (logprob of token_ids [B],
    top-n logprobs [B, top_n] sorted descending, their token ids [B, top_n]); the last two
    are None when top_n <= 0."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
    chosen = logprobs.gather(1, token_ids.view(-1, 1).to(logits.device)).squeeze(1)  # [B]
    if top_n <= 0:
        return chosen, None, None
    vals, ids = _topk(logprobs, min(top_n, logits.shape[1]))  # [B, n] each
    return chosen, vals, ids
