"""Turns the scheduler's choice of requests into one model step: allocates KV slots
for the new tokens, records them in the request table, and builds the ForwardBatch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.cache.kv_pool import KVPool, ReqToTokenTable
from runtime.core import Req
from runtime.engine.forward_batch import ForwardBatch, ForwardMode
from runtime.engine.sampler import cached_arange


@dataclass
class ScheduledBatch:
    mode: ForwardMode
    reqs: list[Req]
    extend_lens: list[int]  # new tokens per request this step
    prefix_lens: list[int]  # kv_len of each request before this step
    forward: ForwardBatch
    num_logits_rows: list[int]  # logits rows per request (prompt logprob rows, then the sample row)
    samples: list[bool]  # whether a request gets a sampled token this step
    prompt_logprob_positions: list[list[int]]  # absolute positions p scoring prompt token p+1
    # VERIFY steps only: each request's draft; it feeds [last token] + draft, with logits
    # for every one of those rows (runtime/engine/verify.py)
    drafts: list[list[int]] | None = None


def build_extend(pool: KVPool, table: ReqToTokenTable, reqs: list[Req], extend_lens: list[int]) -> ScheduledBatch:
    """Allocate KV slots for each request's next extend_lens tokens (prefill on top of
    its cached prefix) and describe the step for the model."""
    prefix_lens = [r.kv_len for r in reqs]
    input_ids, positions, out_locs, logits_rows = [], [], [], []
    num_rows, samples, lp_positions = [], [], []
    row_offset = 0
    for req, prefix_len, extend_len in zip(reqs, prefix_lens, extend_lens):
        last_slot = int(table.table[req.table_row, prefix_len - 1]) if prefix_len else None
        slots = pool.allocate(prefix_len, extend_len, last_slot)
        table.table[req.table_row, prefix_len:prefix_len + extend_len] = slots
        out_locs.append(slots)
        input_ids.extend(req.fill_ids[prefix_len:prefix_len + extend_len])
        positions.extend(range(prefix_len, prefix_len + extend_len))
        lp_pos = _prompt_logprob_positions(req, prefix_len, extend_len)
        completes = prefix_len + extend_len == req.seq_len
        offsets = [p - prefix_len for p in lp_pos] + ([extend_len - 1] if completes else [])
        logits_rows.extend(row_offset + o for o in offsets)
        num_rows.append(len(offsets))
        samples.append(completes)
        lp_positions.append(lp_pos)
        row_offset += extend_len
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    rows = torch.tensor([r.table_row for r in reqs], dtype=torch.int64)
    fb = ForwardBatch(
        mode=ForwardMode.EXTEND,
        input_ids=torch.tensor(input_ids, dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        out_cache_loc=torch.cat(out_locs),
        extend_lens=list(extend_lens),
        seq_lens=seq_lens,
        kv_indices=table.table[rows, :max(seq_lens)],
        logits_indices=torch.tensor(logits_rows, dtype=torch.int64),
    )
    return ScheduledBatch(ForwardMode.EXTEND, reqs, list(extend_lens), prefix_lens, fb, num_rows, samples,
                          lp_positions)


@dataclass
class DecodeInputs:
    """Index tensors of a decode step. They depend only on each request's table row and
    KV length, so the next step over the same rows, each one token longer (the steady
    state of decoding), derives them with one add each instead of rebuilding them:
    after a model forward every distinct torch op runs cache-cold on CPU (20-80 us)."""

    rows: list[int]  # [B] table row per request
    kv_lens: list[int]  # [B] KV length before the step = position of the new token
    rows_t: torch.Tensor  # int64 [B] = rows
    positions: torch.Tensor  # int64 [B] = kv_lens
    new_cells: torch.Tensor  # int64 [B] flat table cell of the new token: row * context + position

    @classmethod
    def for_requests(cls, reqs: list[Req], context: int, last: DecodeInputs | None) -> DecodeInputs:
        rows, kv_lens = [r.table_row for r in reqs], [r.kv_len for r in reqs]
        if last is not None and last.rows == rows and [n + 1 for n in last.kv_lens] == kv_lens:
            return cls(rows, kv_lens, last.rows_t, last.positions + 1, last.new_cells + 1)
        rows_t, positions = torch.tensor(rows, dtype=torch.int64), torch.tensor(kv_lens, dtype=torch.int64)
        return cls(rows, kv_lens, rows_t, positions, rows_t * context + positions)


def build_decode(pool: KVPool, table: ReqToTokenTable, reqs: list[Req],
                 last: DecodeInputs | None = None) -> tuple[ScheduledBatch, DecodeInputs]:
    """One new token per request, vectorized over the batch (this runs every step).
    `last` is the previous decode step's inputs (reused when the batch is unchanged).
    Table reads and writes go through flat indices and index_select: advanced indexing
    on the [rows, context] table costs several times more on CPU."""
    num = len(reqs)
    inputs = DecodeInputs.for_requests(reqs, table.table.shape[1], last)
    flat_table = table.table.view(-1)
    last_slots = flat_table.index_select(0, inputs.new_cells - 1) if pool.page_size > 1 else None
    slots = pool.allocate_decode(last_slots, inputs.positions)
    flat_table.index_copy_(0, inputs.new_cells, slots)
    seq_lens = [n + 1 for n in inputs.kv_lens]
    fb = ForwardBatch(
        mode=ForwardMode.DECODE,
        input_ids=torch.tensor([r.output_ids[-1] for r in reqs], dtype=torch.int64),
        positions=inputs.positions,
        out_cache_loc=slots,
        extend_lens=[1] * num,
        seq_lens=seq_lens,
        kv_indices=table.table[:, :max(seq_lens)].index_select(0, inputs.rows_t),  # [B, max_kv]
        logits_indices=cached_arange(num),
    )
    batch = ScheduledBatch(ForwardMode.DECODE, reqs, [1] * num, inputs.kv_lens, fb, [1] * num, [True] * num,
                           [[] for _ in reqs])
    return batch, inputs


def build_verify(pool: KVPool, table: ReqToTokenTable, reqs: list[Req],
                 drafts: list[list[int]]) -> ScheduledBatch:
    """A decode step that also scores drafts: request i feeds its last token plus
    drafts[i] (maybe empty) at positions kv_len .. kv_len + len(drafts[i]), and every one
    of those rows gets logits. The scheduler frees the slots of rejected draft tokens."""
    prefix_lens = [r.kv_len for r in reqs]
    extend_lens = [1 + len(d) for d in drafts]
    input_ids, positions, out_locs = [], [], []
    for req, prefix_len, extend_len, draft in zip(reqs, prefix_lens, extend_lens, drafts):
        last_slot = int(table.table[req.table_row, prefix_len - 1]) if prefix_len else None
        slots = pool.allocate(prefix_len, extend_len, last_slot)
        table.table[req.table_row, prefix_len:prefix_len + extend_len] = slots
        out_locs.append(slots)
        input_ids += [req.output_ids[-1], *draft]
        positions.extend(range(prefix_len, prefix_len + extend_len))
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    rows = torch.tensor([r.table_row for r in reqs], dtype=torch.int64)
    fb = ForwardBatch(
        mode=ForwardMode.VERIFY,
        input_ids=torch.tensor(input_ids, dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        out_cache_loc=torch.cat(out_locs),
        extend_lens=extend_lens,
        seq_lens=seq_lens,
        kv_indices=table.table[rows, :max(seq_lens)],
        logits_indices=cached_arange(len(input_ids)),
    )
    return ScheduledBatch(ForwardMode.VERIFY, reqs, extend_lens, prefix_lens, fb, extend_lens,
                          [True] * len(reqs), [[] for _ in reqs], drafts=drafts)


def _prompt_logprob_positions(req: Req, prefix_len: int, extend_len: int) -> list[int]:
    """Positions p in this step whose logits score prompt token p+1, for requests
    that asked for prompt logprobs from logprob_start_len on."""
    if not req.options.wants_prompt_logprobs or req.output_ids:
        return []
    first = max(prefix_len, req.options.logprob_start_len - 1, 0)
    last = min(prefix_len + extend_len, len(req.origin_input_ids) - 1)
    return list(range(first, last))
