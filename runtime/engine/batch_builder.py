"""Turns the scheduler's choice of requests into one model step: allocates KV slots
for the new tokens, records them in the request table, and builds the ForwardBatch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.cache.kv_pool import KVPool, ReqToTokenTable
from runtime.core import Req
from runtime.engine.forward_batch import ForwardBatch, ForwardMode


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



def build_batch(pool: KVPool, table: ReqToTokenTable, mode: ForwardMode, reqs: list[Req],
                extend_lens: list[int]) -> ScheduledBatch:
    """Allocate KV slots for this step's new tokens and describe the step for the model."""
    if mode == ForwardMode.DECODE:
        return _build_decode(pool, table, reqs)
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
        mode=mode,
        input_ids=torch.tensor(input_ids, dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        out_cache_loc=torch.cat(out_locs),
        extend_lens=list(extend_lens),
        seq_lens=seq_lens,
        kv_indices=table.table[rows, :max(seq_lens)],
        logits_indices=torch.tensor(logits_rows, dtype=torch.int64),
    )
    return ScheduledBatch(mode, reqs, list(extend_lens), prefix_lens, fb, num_rows, samples, lp_positions)

def _build_decode(pool: KVPool, table: ReqToTokenTable, reqs: list[Req]) -> ScheduledBatch:
    """One new token per request, vectorized over the batch (this runs every step).
    Table reads and writes go through flat indices and index_select: advanced indexing
    on the [rows, context] table costs several times more on CPU."""
    num = len(reqs)
    prefix_lens = [r.kv_len for r in reqs]
    rows = torch.tensor([r.table_row for r in reqs], dtype=torch.int64)
    kv_lens = torch.tensor(prefix_lens, dtype=torch.int64)  # [B] position of the new token
    flat_table = table.table.view(-1)
    new_cells = rows * table.table.shape[1] + kv_lens  # [B] flat table cell of the new token
    last_slots = flat_table.index_select(0, new_cells - 1) if pool.page_size > 1 else None
    slots = pool.allocate_decode(last_slots, kv_lens)
    flat_table.index_copy_(0, new_cells, slots)
    seq_lens = [n + 1 for n in prefix_lens]
    fb = ForwardBatch(
        mode=ForwardMode.DECODE,
        input_ids=torch.tensor([r.output_ids[-1] for r in reqs], dtype=torch.int64),
        positions=kv_lens,
        out_cache_loc=slots,
        extend_lens=[1] * num,
        seq_lens=seq_lens,
        kv_indices=table.table[:, :max(seq_lens)].index_select(0, rows),  # [B, max_kv]
        logits_indices=torch.arange(num),
    )
    return ScheduledBatch(ForwardMode.DECODE, reqs, [1] * num, prefix_lens, fb, [1] * num, [True] * num,
                          [[] for _ in reqs])


def _prompt_logprob_positions(req: Req, prefix_len: int, extend_len: int) -> list[int]:
    """Positions p in this step whose logits score prompt token p+1, for requests
    that asked for prompt logprobs from logprob_start_len on."""
    if not req.wants_prompt_logprobs or req.output_ids:
        return []
    first = max(prefix_len, req.logprob_start_len - 1, 0)
    last = min(prefix_len + extend_len, len(req.origin_input_ids) - 1)
    return list(range(first, last))
