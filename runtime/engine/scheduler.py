"""Continuous batching: admit, chunk, decode, retract, finish.

Each `step()` runs one batch: an extend (prefill) batch when waiting requests can be
admitted, else one decode step for every running request. Requests join and leave
between steps. Nothing here waits on I/O; the engine loop feeds it messages.
"""

from __future__ import annotations

import time

from runtime.cache.kv_pool import KVPool, ReqToTokenTable
from runtime.cache.prefix_cache import PrefixCache
from runtime.components import SCHEDULE_POLICIES, load
from runtime.config import EngineConfig
from runtime.core import AbortCause, FinishKind, FinishReason, GenerateRequest, Req, TokenOut
from runtime.engine.batch_builder import DecodeInputs, ScheduledBatch, build_decode, build_extend, build_verify
from runtime.engine.forward_batch import ForwardMode
from runtime.engine.schedule_policy import prefix_key
from runtime.engine.speculative import Drafter
from runtime.prompt_check import check_fits

DECODE_RESERVE_PER_REQ = 16  # slots kept free per running request when admitting prefills
IN_BATCH_SHARE_MIN = 32  # defer a request that would share this many uncached tokens with the batch


class Scheduler:
    def __init__(self, cfg: EngineConfig, runner, pool: KVPool, table: ReqToTokenTable,
                 cache: PrefixCache, context_len: int, eos_ids: tuple[int, ...], grammars=None) -> None:
        self.cfg, self.runner, self.pool, self.table, self.cache = cfg, runner, pool, table, cache
        self.order_waiting = load(SCHEDULE_POLICIES, cfg.schedule_policy, "schedule policy")
        self.context_len = context_len
        self.eos_ids = set(eos_ids)
        self.waiting: list[Req] = []
        self.grammars = grammars  # GrammarManager: requests wait there while their grammar compiles
        self.running: list[Req] = []
        # requests holding KV that need another extend before they can decode (the rest of
        # a chunked prefill). They go first.
        self.partial: list[Req] = []
        self._pending_outputs: list[TokenOut] = []  # finishes decided outside a step
        self.last_batch: ScheduledBatch | None = None
        self._decode_inputs: DecodeInputs | None = None  # the last decode step's, reused while unchanged
        self.drafter = Drafter(cfg.speculative_algorithm, cfg.speculative_num_draft_tokens,
                               not cfg.disable_jump_forward, lambda: self.grammars.tokenizer)
        self.stats = {"num_retractions": 0, "prompt_tokens": 0, "generation_tokens": 0,
                      "cached_tokens": 0, "decode_steps": 0, "extend_steps": 0, "verify_steps": 0,
                      "drafted_requests": 0, "draft_tokens": 0, "accepted_draft_tokens": 0}

    # ---- messages ------------------------------------------------------------
    def add_request(self, msg: GenerateRequest) -> list[TokenOut]:
        req = Req(rid=msg.rid, origin_input_ids=list(msg.input_ids), sampling_params=msg.sampling_params,
                  options=msg.options, arrival_time=msg.arrival_time)
        error = self._check_fits(req)
        spec = None
        if not error and self.grammars is not None:
            try:
                spec = self.grammars.spec_for(req)
            except ValueError as e:
                error = f"invalid grammar: {e}"
        if error:
            req.finish_reason = FinishReason.abort(AbortCause.INVALID_REQUEST, error)
            return [self._token_out(req)]
        if spec is not None:
            self.grammars.submit(req, spec)
        else:
            self.waiting.append(req)
        return []

    def _poll_grammars(self) -> None:
        if self.grammars is None or not self.grammars.pending:
            return
        ready, failed = self.grammars.poll()
        self.waiting += ready
        for req, message in failed:
            req.finish_reason = FinishReason.abort(AbortCause.INVALID_REQUEST, message)
            self._pending_outputs.append(self._token_out(req))

    def _check_fits(self, req: Req) -> str | None:
        """`runtime.Engine` checked it already; a message straight from another sender may not be."""
        try:
            check_fits(len(req.origin_input_ids), req.sampling_params.max_new_tokens, self.context_len,
                       self.pool.capacity)
        except ValueError as e:
            return str(e)
        return None

    def abort(self, rid: str) -> list[TokenOut]:
        reason = FinishReason.abort(AbortCause.CANCELLED, "aborted by request")
        compiling = self.grammars.remove(rid) if self.grammars is not None else None
        if compiling is not None:
            compiling.finish_reason = reason
            return [self._token_out(compiling)]
        for req in self.waiting:
            if req.rid == rid:
                self.waiting.remove(req)
                req.finish_reason = reason
                self._free_kv(req)
                return [self._token_out(req)]
        for group in (self.running, self.partial):
            for req in group:
                if req.rid == rid:
                    group.remove(req)
                    req.finish_reason = reason
                    self._free_kv(req)
                    return [self._token_out(req)]
        return []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.partial or (self.grammars and self.grammars.pending))

    def num_requests(self) -> dict[str, int]:
        compiling = len(self.grammars.pending) if self.grammars else 0
        return {"running": len(self.running) + len(self.partial), "waiting": len(self.waiting) + compiling}

    # ---- one step ------------------------------------------------------------
    def step(self) -> list[TokenOut]:
        self._poll_grammars()
        batch = self.last_batch = self._schedule_extend() or self._schedule_decode()
        if batch is None and self.partial and not self.running:
            # partly extended requests hold KV but none fits its next extend: free one so
            # the rest can move (it resumes from the prefix cache / by recomputation)
            self._retract(self.partial[-1])
        outputs, self._pending_outputs = self._pending_outputs, []
        if batch is not None:
            start = time.perf_counter()
            result = self.runner.run(batch)
            if batch.mode != ForwardMode.EXTEND:
                self.drafter.costs.observe(batch.mode == ForwardMode.VERIFY, len(batch.reqs),
                                           len(batch.forward.input_ids), time.perf_counter() - start)
            outputs += self._process_result(batch, result)
        return outputs

    def _schedule_extend(self) -> ScheduledBatch | None:
        if not (self.partial or self.waiting):
            return None
        free_rows = self.table.available_size()
        budget = self.cfg.max_prefill_tokens
        reserve = sum(min(DECODE_RESERVE_PER_REQ, r.sampling_params.max_new_tokens - len(r.output_ids))
                      for r in self.running)
        reqs, extend_lens = [], []
        carried_over, self.partial = self.partial, []
        candidates = carried_over + self.order_waiting(self.waiting, self.cache)
        for req in candidates:
            carried = req.table_row is not None  # already holds KV (in carried_over)
            if budget <= 0 or len(self.running) + len(reqs) >= self.cfg.max_running_requests:
                break
            if not carried:
                if free_rows == 0:
                    break
                self._match_prefix(req)
                if self._shares_uncached_prefix(req, reqs):
                    self._unmatch(req)  # wait one step: it will hit what the other computes
                    continue
            remaining = req.seq_len - req.kv_len
            extend_len = min(remaining, budget, self.cfg.chunked_prefill_size)
            needed = self.pool.pages_needed(req.kv_len, extend_len) * self.pool.page_size
            if not self._ensure_free(needed + reserve):  # reserve includes this batch's earlier picks
                if not carried:
                    self._unmatch(req)
                break
            if not carried:
                req.table_row = self.table.allocate()
                free_rows -= 1
                self.table.table[req.table_row, :req.cached_len] = req.prefix_slots
                req.prefix_slots = None
            reqs.append(req)
            extend_lens.append(extend_len)
            budget -= extend_len
            reserve += needed + min(DECODE_RESERVE_PER_REQ, req.sampling_params.max_new_tokens)
            if extend_len < remaining:
                break  # at most one request is split per step; its rest goes first next step
        admitted_ids = {id(r) for r in reqs}
        self.partial = [r for r in carried_over if id(r) not in admitted_ids]
        if reqs and reqs[-1].kv_len + extend_lens[-1] < reqs[-1].seq_len:
            self.partial.insert(0, reqs[-1])
        if not reqs:
            return None
        admitted = {id(r) for r in reqs}
        self.waiting = [r for r in self.waiting if id(r) not in admitted]
        return build_extend(self.pool, self.table, reqs, extend_lens)

    def _match_prefix(self, req: Req) -> None:
        match = self.cache.match_prefix(prefix_key(req), req.extra_key)
        self.cache.lock(match.node)
        req.last_node, req.kv_len, req.cached_len = match.node, match.prefix_len, match.prefix_len
        req.prefix_slots = match.slots
        if not req.output_ids and not req.num_retractions:
            req.cached_tokens = match.prefix_len  # what the user is told was served from cache

    def _shares_uncached_prefix(self, req: Req, batch: list[Req]) -> bool:
        """In-batch prefix sharing: True if a request already in this batch will compute
        at least IN_BATCH_SHARE_MIN tokens that this one could then read from the cache."""
        if not self.cache.shares:
            return False
        key = prefix_key(req)
        return any(common_prefix_len(key, other.fill_ids) - req.kv_len >= IN_BATCH_SHARE_MIN
                   for other in batch if other.extra_key == req.extra_key)

    def _unmatch(self, req: Req) -> None:
        """Undo `_match_prefix` for a request that could not be given memory after all."""
        self.cache.unlock(req.last_node)
        req.last_node, req.prefix_slots, req.kv_len, req.cached_len = None, None, 0, 0

    def _ensure_free(self, num_slots: int) -> bool:
        short = num_slots - self.pool.available_size()
        if short > 0:
            self.cache.evict(short)
        return self.pool.available_size() >= num_slots

    def _schedule_decode(self) -> ScheduledBatch | None:
        if not self.running:
            return None
        while True:
            if self.pool.page_size == 1:
                needed = len(self.running)
            else:
                needed = sum(self.pool.pages_needed(r.kv_len, 1) for r in self.running) * self.pool.page_size
            if self._ensure_free(needed):
                break
            if len(self.running) == 1:  # cannot grow even alone: end it rather than loop
                req = self.running.pop()
                req.finish_reason = FinishReason(FinishKind.LENGTH, message="KV pool exhausted")
                self._free_kv(req)
                self._pending_outputs.append(self._token_out(req))
                return None
            self._retract(max(self.running, key=lambda r: (r.arrival_time, r.rid)))
        if self.drafter.enabled:
            closed = not (self.waiting or self.partial or (self.grammars and self.grammars.pending))
            drafts = self.drafter.propose(self.running, self.context_len, closed)
            if any(drafts) and self._ensure_free(sum(
                    self.pool.pages_needed(r.kv_len, 1 + len(d)) for r, d in zip(self.running, drafts))
                    * self.pool.page_size):
                return build_verify(self.pool, self.table, list(self.running), drafts)
        batch, self._decode_inputs = build_decode(self.pool, self.table, list(self.running), self._decode_inputs)
        return batch

    def _retract(self, req: Req) -> None:
        """Give back a running request's KV (kept in the prefix cache where possible) and
        re-queue it; it resumes later by prefilling prompt + output so far."""
        (self.running if req in self.running else self.partial).remove(req)
        self._free_kv(req)
        req.kv_len = req.cached_len = 0
        req.num_retractions += 1
        self.stats["num_retractions"] += 1
        self.waiting.insert(0, req)

    def _free_kv(self, req: Req) -> None:
        if req.table_row is None:
            return
        slots = self.table.table[req.table_row, :req.kv_len].clone()
        self.cache.cache_finished(req.fill_ids[:req.kv_len], slots, req.last_node, req.extra_key)
        self.table.free(req.table_row)
        req.table_row, req.last_node = None, None

    # ---- results ------------------------------------------------------------
    def _process_result(self, batch: ScheduledBatch, result) -> list[TokenOut]:
        outputs = []
        verify, extend = batch.mode == ForwardMode.VERIFY, batch.mode == ForwardMode.EXTEND
        self.stats[f"{batch.mode.value}_steps"] += 1
        for i, req in enumerate(batch.reqs):
            req.kv_len = batch.prefix_lens[i] + batch.extend_lens[i]
            if req.finish_reason is not None:  # aborted while the step ran (not possible today, kept safe)
                continue
            if extend:
                if req.options.wants_prompt_logprobs and (result.prompt_logprobs.get(i) or (
                        req.input_token_logprobs is None and req.kv_len >= len(req.origin_input_ids))):
                    self._add_prompt_logprobs(req, result.prompt_logprobs.get(i, []))
                self._cache_chunk(req)  # share the computed prompt now, not only at the end
                if req.kv_len < req.seq_len:  # more prefill chunks to go
                    continue
                if not req.output_ids and not req.num_retractions:
                    self.stats["prompt_tokens"] += len(req.origin_input_ids)
                    self.stats["cached_tokens"] += req.cached_tokens
            if req.sampling_params.max_new_tokens == 0:
                req.finish_reason = FinishReason(FinishKind.LENGTH)
            else:
                tokens = result.emitted[i] if verify else [result.next_token_ids[i]]
                num_before = len(req.output_ids)
                for k, token in enumerate(tokens):
                    req.output_ids.append(token)
                    self.stats["generation_tokens"] += 1
                    if req.options.return_logprob:
                        lp, top = result.output_logprobs[i][k]
                        req.output_token_logprobs.append((lp, token))
                        req.output_top_logprobs.append(top)
                    self._check_finished(req, token)
                    if req.finish_reason is not None:
                        break
                if verify:
                    self._settle_draft(req, batch.prefix_lens[i], batch.drafts[i], len(tokens) - 1,
                                       len(req.output_ids) - num_before)
            finished = req.finish_reason is not None
            if finished and not extend:
                self.running.remove(req)
            if finished:
                self.drafter.finished(req)
                self._free_kv(req)
            elif extend:
                self.running.append(req)
            if finished or req.options.stream or req.sampling_params.stop or req.sampling_params.stop_regex:
                # stop strings are matched on text in the main process: it needs every token
                outputs.append(self._token_out(req))
        return outputs

    def _cache_chunk(self, req: Req) -> None:
        """Let the prefix cache share the chunks prefilled so far."""
        slots = self.table.table[req.table_row, :req.kv_len].clone()
        match = self.cache.cache_unfinished(req.fill_ids[:req.kv_len], slots, req.last_node, req.extra_key)
        if match.node is not None:
            self.table.table[req.table_row, :match.prefix_len] = match.slots
            req.last_node, req.cached_len = match.node, match.prefix_len

    def _add_prompt_logprobs(self, req: Req, items: list[tuple[float, int, list]]) -> None:
        if req.input_token_logprobs is None:
            req.input_token_logprobs, req.input_top_logprobs = [], []
            if req.options.logprob_start_len == 0:
                req.input_token_logprobs.append((None, req.origin_input_ids[0]))
                req.input_top_logprobs.append(None)
        for lp, token, top in items:
            req.input_token_logprobs.append((lp, token))
            req.input_top_logprobs.append(top)

    def _check_finished(self, req: Req, token: int) -> None:
        sp = req.sampling_params
        num_out = len(req.output_ids)
        if req.grammar is not None:
            if not req.grammar.accept_token(token):  # unreachable unless the matcher hit a limit
                reason = req.grammar.error() or "the mask allowed it"
                req.finish_reason = FinishReason.abort(AbortCause.INVALID_REQUEST, (
                    f"the grammar failed at output token {num_out} (id {token}): {reason}"))
                return
            if req.grammar.is_terminated():
                req.finish_reason = FinishReason(FinishKind.STOP, matched=token)
                return
        if num_out >= sp.min_new_tokens and (
                (sp.stop_token_ids and token in sp.stop_token_ids)
                or (not sp.ignore_eos and token in self.eos_ids)):
            req.finish_reason = FinishReason(FinishKind.STOP, matched=token)
        elif num_out >= sp.max_new_tokens or req.seq_len >= self.context_len:
            req.finish_reason = FinishReason(FinishKind.LENGTH)

    def _settle_draft(self, req: Req, prefix_len: int, draft: list[int], num_accepted: int,
                      num_emitted: int) -> None:
        """After a verify step: the KV of the last token and the accepted draft tokens stays
        (of those emitted, if the request finished early), the rejected ones' slots go back."""
        req.kv_len = prefix_len + 1 + min(num_accepted, num_emitted)
        rejected = self.table.table[req.table_row, req.kv_len:prefix_len + 1 + len(draft)]
        self.pool.free(rejected.clone())
        if draft:
            self.stats["drafted_requests"] += 1
            self.stats["draft_tokens"] += len(draft)
            self.stats["accepted_draft_tokens"] += num_accepted
            req.spec.update(len(draft), num_accepted, self.drafter.max_len)

    def _token_out(self, req: Req) -> TokenOut:
        new = req.output_ids[req.num_sent:]
        out = TokenOut(
            rid=req.rid, new_token_ids=new, finished=req.finished,
            finish_reason=req.finish_reason, prompt_tokens=len(req.origin_input_ids),
            completion_tokens=len(req.output_ids), cached_tokens=req.cached_tokens)
        if req.options.return_logprob:
            out.output_token_logprobs = req.output_token_logprobs[req.num_sent:]
            out.output_top_logprobs = req.output_top_logprobs[req.num_sent:]
            if req.input_token_logprobs is not None and not req.input_logprobs_sent and \
                    (req.finished or req.output_ids):
                out.input_token_logprobs = req.input_token_logprobs
                out.input_top_logprobs = req.input_top_logprobs
                req.input_logprobs_sent = True
        req.num_sent = len(req.output_ids)
        return out

    # ---- introspection --------------------------------------------------------
    def check_no_leaks(self) -> None:
        """Raise if, with no requests alive, any slot is neither free nor in the cache."""
        assert not self.has_work, "requests are still alive"
        held = self.pool.available_size() + self.cache.total_size()
        if held != self.pool.capacity:
            raise AssertionError(f"KV leak: {self.pool.capacity - held} slots unaccounted for")
        if self.cache.protected_size() != 0:
            raise AssertionError(f"{self.cache.protected_size()} cached slots still locked")


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix (binary search over C-level slice compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
