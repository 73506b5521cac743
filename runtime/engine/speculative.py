"""Draft-free speculative decoding: where the drafts come from and how long they are.

A draft is a guess of a request's next few tokens. The engine feeds the last sampled
token plus the draft through the model in one extend step and keeps the longest prefix
the model itself would have produced (runtime/engine/verify.py), so outputs do not
change; only the number of model steps does. Drafts cost no model here, they come from:

  ngram    prompt lookup: the tokens that followed the latest earlier occurrence of the
           request's last n tokens (n = 5 down to 2) in its own prompt + output. Tool
           arguments, quotes, fields and code copied from the input are found this way.
  suffix   the same match against the outputs of earlier requests (what the radix cache
           holds for other turns, branches and agent steps): a repeated tool call, the
           keys of a JSON answer a loop keeps producing.
  grammar  the canonical tokenization of the text the request's grammar forces next
           (JSON keys, punctuation, the tail of an enum value): jump-forward, but checked.
  auto     grammar text when the grammar forces some, else the longer of the ngram and
           suffix matches.

Adaptivity, per request: the draft length doubles after a full accept (up to
--speculative-num-draft-tokens) and halves (to no less than accepted + 1) after a partial
one; after misses (nothing accepted) a request skips 1, 3, 7, 15 steps before drafting
again; `alpha`, its running per-token acceptance, says how likely each draft token is kept.
Per step: the engine times its decode and verify steps and fits each, per batch size
class, as seconds = a + b * tokens (`StepCosts`); draft tokens are added, most likely
first, while a token's chance of being kept exceeds what its share of the step would have
produced (b times the tokens per second of the step so far), and the step only verifies
if its expected tokens per second beat a plain decode step's. At batch 1 a token costs ~3% of a step, so
nearly every draft goes in; at a large batch the step is compute-bound and only drafts
that are nearly certain (grammar text, long copies) do. At most STEP_TOKEN_BUDGET tokens.
When no request waits for a slot (a closed batch) and the step is mostly per-token work,
tokens emitted early by a request that is not among the longest do not shorten the batch,
they only make its steps dearer; so only the longest requests draft, and only as deep as
all of them are likely to accept (Drafter._closed_batch).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from runtime.core import Req

NGRAM_SIZES = range(5, 1, -1)  # longest match first
SUFFIX_SIZES = range(8, 2, -1)  # across requests a match must be longer to be trusted
STEP_TOKEN_BUDGET = 32  # tokens one verify step may carry (the linear layers give a row the same bits up to 32 rows)
MAX_SKIP = 15  # steps a request waits after repeated misses before drafting again
SUFFIX_INDEX_TOKENS = 1 << 18  # output tokens the suffix index keeps (oldest dropped first)


class NgramIndex:
    """Where each n-gram of a growing token sequence last occurred.

    `last[g]` = the position right after the latest occurrence of n-gram g that has a
    token after it; the sequence's own final n-grams are only entered once the next token
    arrives, so a lookup of them finds an earlier occurrence."""

    def __init__(self, sizes: range = NGRAM_SIZES) -> None:
        self.sizes = sizes
        self.tokens: list[int] = []
        self.last: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: list[int]) -> None:
        seq, start = self.tokens, len(self.tokens)
        seq.extend(tokens)
        for i in range(max(start, 1), len(seq)):  # seq[i] is the continuation of the grams ending at i
            for n in self.sizes:
                if i >= n:
                    self.last[tuple(seq[i - n:i])] = i

    def lookup(self, context: list[int], k: int) -> tuple[list[int], int]:
        """Up to k tokens that followed the longest n-gram ending `context`, and n (0: none)."""
        for n in self.sizes:
            if len(context) >= n:
                at = self.last.get(tuple(context[-n:]))
                if at is not None:
                    return self.tokens[at:at + k], n
        return [], 0


class SuffixIndex:
    """n-gram lookup over the outputs of finished requests, kept to a token budget."""

    def __init__(self, max_tokens: int = SUFFIX_INDEX_TOKENS) -> None:
        self.max_tokens = max_tokens
        self.seqs: OrderedDict[int, list[int]] = OrderedDict()  # serial -> context tail + output
        self.num_tokens = 0
        self.last: dict[tuple[int, ...], tuple[int, int]] = {}  # n-gram -> (serial, continuation pos)
        self._serial = 0

    def add(self, context: list[int], output: list[int]) -> None:
        """Index `output` as the continuation of `context` (only its last tokens matter)."""
        if not output:
            return
        head = context[-SUFFIX_SIZES[0]:]
        seq = head + output
        self._serial += 1
        self.seqs[self._serial] = seq
        self.num_tokens += len(seq)
        for i in range(len(head), len(seq)):
            for n in SUFFIX_SIZES:
                if i >= n:
                    self.last[tuple(seq[i - n:i])] = (self._serial, i)
        while self.num_tokens > self.max_tokens and len(self.seqs) > 1:
            _, old = self.seqs.popitem(last=False)
            self.num_tokens -= len(old)
        if len(self.last) > 2 * len(SUFFIX_SIZES) * self.max_tokens:  # drop entries of dropped sequences
            self.last = {g: hit for g, hit in self.last.items() if hit[0] in self.seqs}

    def lookup(self, context: list[int], k: int) -> tuple[list[int], int]:
        for n in SUFFIX_SIZES:
            if len(context) >= n:
                hit = self.last.get(tuple(context[-n:]))
                if hit is not None and hit[0] in self.seqs:
                    return self.seqs[hit[0]][hit[1]:hit[1] + k], n
        return [], 0


class LinearCost:
    """Seconds of a step as a + b * tokens, fitted to recent steps (exponentially decayed sums)."""

    DECAY = 0.97

    def __init__(self) -> None:
        self.n = self.sx = self.sy = self.sxx = self.sxy = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        d = self.DECAY
        self.n, self.sx, self.sy = d * self.n + 1, d * self.sx + tokens, d * self.sy + seconds
        self.sxx, self.sxy = d * self.sxx + tokens * tokens, d * self.sxy + tokens * seconds

    @property
    def known(self) -> bool:
        return self.n >= 3

    def coefficients(self) -> tuple[float, float]:
        mx, my = self.sx / self.n, self.sy / self.n
        var = self.sxx / self.n - mx * mx
        b = max((self.sxy / self.n - mx * my) / var, 0.0) if var > 0.25 else 0.0
        return my - b * mx, b

    def predict(self, tokens: int) -> float:
        a, b = self.coefficients()
        return a + b * tokens


class StepCosts:
    """What decode and verify steps cost on this machine, learnt while serving, per batch
    size class (1, 2-3, 4-7, 8-15, 16-31 requests): a token's share of a step differs a lot
    between batch 1 and batch 16, so one line through both would mislead."""

    def __init__(self) -> None:
        self.models: dict[tuple[bool, int], LinearCost] = {}

    def _model(self, verify: bool, batch_size: int) -> LinearCost:
        return self.models.setdefault((verify, batch_size.bit_length()), LinearCost())

    def observe(self, verify: bool, batch_size: int, tokens: int, seconds: float) -> None:
        self._model(verify, batch_size).observe(tokens, seconds)

    def decode_model(self, batch_size: int) -> LinearCost:
        return self._model(False, batch_size)

    def verify_model(self, batch_size: int) -> LinearCost:
        """Until verify steps of this size were seen, assume they cost what decode steps do
        (so they get tried)."""
        model = self._model(True, batch_size)
        return model if model.known else self.decode_model(batch_size)


@dataclass
class SpecState:
    """One request's speculation state (Req.spec)."""

    draft_len: int
    index: NgramIndex = field(default_factory=NgramIndex)
    misses: int = 0  # consecutive verify steps that accepted nothing
    skip: int = 0  # steps left before drafting again
    alpha: float = 0.7  # running chance that a draft token is kept, given the one before it was
    num_drafted: int = 0
    num_accepted: int = 0

    def update(self, drafted: int, accepted: int, max_len: int) -> None:
        self.num_drafted += drafted
        self.num_accepted += accepted
        # a accepted of d drafted: the geometric model's estimate is a / (a + 1), or 1 if all were kept
        estimate = 1.0 if accepted == drafted else accepted / (accepted + 1)
        self.alpha = 0.7 * self.alpha + 0.3 * estimate
        if accepted == drafted:
            self.draft_len = min(max_len, 2 * self.draft_len)
        else:
            self.draft_len = max(1, accepted + 1, self.draft_len // 2)
        self.misses = self.misses + 1 if accepted == 0 else 0
        self.skip = min(2 ** self.misses - 1, MAX_SKIP)


class Drafter:
    """Proposes each running request's draft for the next step (the scheduler asks it)."""

    def __init__(self, algorithm: str, num_draft_tokens: int, jump_forward: bool, tokenizer_of) -> None:
        self.max_len = num_draft_tokens
        self.sources = {"auto": {"ngram", "suffix", "grammar"}, "none": set()}.get(algorithm, {algorithm})
        if jump_forward:
            self.sources = self.sources | {"grammar"}
        self.tokenizer_of = tokenizer_of  # () -> the grammar tokenizer (loaded with the first grammar)
        self.suffix = SuffixIndex() if "suffix" in self.sources else None
        self._forced: dict[str, list[int]] = {}  # forced text -> its tokens (cleared when it grows large)
        self.costs = StepCosts()

    @property
    def enabled(self) -> bool:
        return self.max_len > 0 and bool(self.sources)

    def propose(self, reqs: list[Req], context_len: int, closed: bool = False) -> list[list[int]]:
        """A draft (maybe empty) per request: the candidates cut to what pays this step.
        closed: nothing waits for a slot. If the step is then mostly per-token work (b n > a:
        a large batch), the batch's time is that of its longest requests (_closed_batch);
        below that drafts are cheap and each request's own latency decides."""
        if len(reqs) >= STEP_TOKEN_BUDGET:
            return [[] for _ in reqs]
        drafts = [self._draft(req, context_len) for req in reqs]
        if not any(drafts):
            return drafts
        cost, decode = self.costs.verify_model(len(reqs)), self.costs.decode_model(len(reqs))
        a, b = cost.coefficients() if cost.known else (1.0, 0.0)  # nothing measured yet: take them all
        if closed and len(reqs) > 1 and b * len(reqs) > a:
            return self._closed_batch(reqs, drafts, cost, decode)
        # every draft token j of request i: the chance it is emitted, alpha_i ** j
        items = sorted(((req.spec.alpha ** (j + 1), i) for i, (req, d) in enumerate(zip(reqs, drafts))
                        for j in range(len(d))), reverse=True)
        tokens, expected, keep = len(reqs), float(len(reqs)), [0] * len(reqs)
        for chance, i in items:
            if tokens >= STEP_TOKEN_BUDGET or chance * (a + b * tokens) <= b * expected:
                break  # this token's chance no longer pays for its share of the step
            keep[i] += 1
            tokens += 1
            expected += chance
        if cost.known and decode.known and expected / cost.predict(tokens) <= len(reqs) / decode.predict(len(reqs)):
            return [[] for _ in reqs]  # a plain decode step emits tokens faster
        return [d[:n] for d, n in zip(drafts, keep)]

    def _closed_batch(self, reqs: list[Req], drafts: list[list[int]], cost: LinearCost,
                      decode: LinearCost) -> list[list[int]]:
        """Drafts for a batch that no queued request will join: it ends when its longest
        requests do (those with the most tokens left, give or take a draft), so a verify step
        shortens it by the tokens that all of those accept; the rest only make it dearer (a
        request that finishes early frees a slot nobody takes). Chosen: the depth j (every
        longest request drafting j tokens) of the best expected steps advanced per second,
        1 + sum over t <= j of prod_i alpha_i ** t, if that beats a plain decode step."""
        left = [r.sampling_params.max_new_tokens - len(r.output_ids) for r in reqs]
        longest = [i for i, n in enumerate(left) if n >= max(left) - self.max_len]
        depth = min(min(len(drafts[i]) for i in longest), (STEP_TOKEN_BUDGET - len(reqs)) // len(longest))
        if depth == 0:
            return [[] for _ in reqs]
        alpha = 1.0
        for i in longest:
            alpha *= reqs[i].spec.alpha
        if not (cost.known and decode.known):  # nothing measured yet: try them
            best = depth
        else:
            rate = lambda j: sum(alpha ** t for t in range(j + 1)) / cost.predict(len(reqs) + j * len(longest))
            best = max(range(1, depth + 1), key=rate)
            if rate(best) <= 1 / decode.predict(len(reqs)):
                return [[] for _ in reqs]  # a plain decode step ends the batch sooner
        chosen = set(longest)
        return [d[:best] if i in chosen else [] for i, d in enumerate(drafts)]

    def _draft(self, req: Req, context_len: int) -> list[int]:
        state = req.spec
        if state is None:
            state = req.spec = SpecState(draft_len=self.max_len)
        if state.skip:
            state.skip -= 1
            return []
        sp = req.sampling_params
        room = min(sp.max_new_tokens - len(req.output_ids), context_len - req.seq_len) - 1
        k = min(state.draft_len, room)
        if k <= 0:
            return []
        if req.grammar is not None and "grammar" in self.sources:
            forced = self._grammar_draft(req, k)
            if forced or self.sources == {"grammar"}:
                return forced
        context = req.fill_ids
        best, best_n = [], 0
        if "ngram" in self.sources:
            state.index.extend(context[len(state.index.tokens):])
            best, best_n = state.index.lookup(context, k)
        if self.suffix is not None:
            other, n = self.suffix.lookup(context, k)
            if n > best_n:
                best = other
        return best

    def _grammar_draft(self, req: Req, k: int) -> list[int]:
        text = req.grammar.jump_forward_string()
        if not text:
            return []
        ids = self._forced.get(text)
        if ids is None:
            ids = self.tokenizer_of().encode(text, add_special_tokens=False)
            if len(self._forced) > 4096:
                self._forced.clear()
            self._forced[text] = ids
        return ids[:k]

    def forget(self) -> None:
        if self.suffix is not None:
            self.suffix = SuffixIndex(self.suffix.max_tokens)

    def finished(self, req: Req) -> None:
        """Learn a finished request's output for the suffix source."""
        if self.suffix is not None and req.output_ids:
            self.suffix.add(req.origin_input_ids, req.output_ids)
