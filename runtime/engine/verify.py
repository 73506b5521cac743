"""Verification of speculative drafts: which draft tokens a request keeps.

In a verify step request i fed its last token and its draft d_1..d_k, so its k + 1
logits rows score the tokens after d_1..d_j for j = 0..k. Every row is processed as a
plain decode step at that position would process it: penalties over the output so far
plus d_1..d_j, tokens banned before min_new_tokens, and the grammar mask of the state
after d_1..d_j (the matcher is advanced through the draft and rolled back).

  greedy   keep the longest prefix of the draft equal to each row's argmax, then add the
           argmax after it: exactly the tokens decoding one at a time would produce.
  sampled  the rejection rule for a deterministic draft (q = one-hot at d_j): keep d_j
           with probability p_j(d_j); at the first rejection draw from p_j without d_j
           (renormalised); after a full accept draw from p_k. Each emitted token then has
           the distribution p given the tokens before it, as without drafts.

So a request emits between 1 and k + 1 tokens per step.
"""

from __future__ import annotations

import torch

from runtime.constrained.bitmask import allocate_bitmask, apply_bitmask_
from runtime.engine.sampler import (
    SamplingBatch,
    compute_logprobs,
    greedy_tokens,
    is_plain_greedy,
    processed_logits,
    sampling_probs,
    seeded_generator,
)


def accept_greedy(targets: list[int], draft: list[int]) -> list[int]:
    """targets: argmax of rows 0..k -> the tokens to emit."""
    m = 0
    while m < len(draft) and targets[m] == draft[m]:
        m += 1
    return draft[:m] + [targets[m]]


def accept_sampled(probs: torch.Tensor, draft: list[int], generator: torch.Generator | None = None) -> list[int]:
    """probs: float32 [k + 1, V], the target distribution of each row -> the tokens to emit."""
    p_draft = probs[torch.arange(len(draft)), torch.tensor(draft, dtype=torch.int64)].tolist() if draft else []
    u = torch.rand(len(draft), dtype=torch.float64, generator=generator).tolist()
    for j, d in enumerate(draft):
        if u[j] >= p_draft[j]:  # rejected: draw from the residual max(p - q, 0) = p without d
            residual = probs[j].clone()
            residual[d] = 0.0
            return draft[:j] + [int(torch.multinomial(residual, 1, generator=generator))]
    return draft + [int(torch.multinomial(probs[len(draft)], 1, generator=generator))]


def verify_drafts(batch, logits: torch.Tensor, banned_for) -> tuple[list[list[int]], dict]:
    """logits [T, V] (all rows of a verify batch, request by request) -> (tokens to emit
    per request, {request index: [(logprob, top alternatives)] per emitted token} for the
    requests that want logprobs). banned_for(req, num_output_tokens) -> banned ids."""
    reqs, drafts = batch.reqs, batch.drafts
    starts = [0]
    for d in drafts:
        starts.append(starts[-1] + 1 + len(d))
    contexts = [[req.output_ids + d[:j] for j in range(len(d) + 1)] for req, d in zip(reqs, drafts)]
    banned = [[banned_for(req, len(c)) for c in ctx] for req, ctx in zip(reqs, contexts)]
    plain = all(req.grammar is None and is_plain_greedy(req.sampling_params) and not any(b)
                for req, b in zip(reqs, banned))
    if plain:
        targets = greedy_tokens(logits).tolist()
        tokens = [accept_greedy(targets[s:e], d) for s, e, d in zip(starts, starts[1:], drafts)]
    else:
        tokens = _verify_processed(reqs, drafts, starts, contexts, banned, logits)
    logprobs = {}
    for i, req in enumerate(reqs):
        if req.options.return_logprob:
            n, top_n = len(tokens[i]), req.options.top_logprobs_num
            lps, vals, ids = compute_logprobs(logits[starts[i]:starts[i] + n], torch.tensor(tokens[i]), top_n)
            logprobs[i] = [(float(lps[j]), list(zip(vals[j].tolist(), ids[j].tolist())) if top_n else [])
                           for j in range(n)]
    return tokens, logprobs


def _verify_processed(reqs, drafts, starts, contexts, banned, logits) -> list[list[int]]:
    row_reqs = [req for req, d in zip(reqs, drafts) for _ in range(len(d) + 1)]  # [T] request of each row
    rows_params = [req.sampling_params for req in row_reqs]
    sb = SamplingBatch.build(rows_params, [c for ctx in contexts for c in ctx],
                             banned_token_ids=[b for per_req in banned for b in per_req],
                             prompt_ids=[req.origin_input_ids for req in row_reqs])
    x = processed_logits(logits, sb)  # [T, V] float32
    if any(req.grammar is not None for req in reqs):
        bitmask = allocate_bitmask(x.shape[0], x.shape[1])
        for req, d, start in zip(reqs, drafts, starts):
            if req.grammar is not None:
                _fill_draft_masks(req.grammar, d, bitmask, start)
        apply_bitmask_(x, bitmask.to(x.device))
    greedy_rows = sb.temperatures == 0
    targets = greedy_tokens(x).tolist() if bool(greedy_rows.any()) else None
    tokens = []
    for i, (req, d) in enumerate(zip(reqs, drafts)):
        s, e = starts[i], starts[i + 1]
        if bool(greedy_rows[s]):
            tokens.append(accept_greedy(targets[s:e], d))
            continue
        rows = SamplingBatch.build(rows_params[s:e], [c for c in contexts[i]])
        probs = sampling_probs(x[s:e], rows)  # [k + 1, V]
        seed = req.sampling_params.sampling_seed
        gen = seeded_generator(seed, len(req.output_ids)) if seed is not None else None
        tokens.append(accept_sampled(probs, d, gen))
    return tokens


def _fill_draft_masks(grammar, draft: list[int], bitmask: torch.Tensor, start: int) -> None:
    """Rows start..start+k of bitmask: the grammar's mask after draft[:j]. Rows after a
    draft token the grammar refuses stay all-allowed: no accepted path reaches them."""
    accepted = 0
    for j in range(len(draft) + 1):
        grammar.fill_bitmask(bitmask, start + j)
        if j == len(draft) or not grammar.accept_token(draft[j]):
            break
        accepted += 1
    if accepted:
        grammar.rollback(accepted)
