"""Decode batches: the index tensors of the last decode step are reused only while the
batch is the same requests, each exactly one token further."""

import torch

from runtime.cache.kv_pool import KVPool, ReqToTokenTable
from runtime.core import Req, SamplingParams
from runtime.engine.batch_builder import DecodeInputs, build_decode


def running_requests(table: ReqToTokenTable, kv_lens: list[int]) -> list[Req]:
    reqs = []
    for i, kv_len in enumerate(kv_lens):
        req = Req(rid=f"r{i}", origin_input_ids=[1] * kv_len, sampling_params=SamplingParams())
        req.table_row, req.kv_len, req.output_ids = table.allocate(), kv_len, [100 + i]
        reqs.append(req)
    return reqs


def advance(reqs: list[Req], tokens: int = 1) -> None:
    for req in reqs:
        req.kv_len += tokens
        req.output_ids += [7] * tokens


def check_matches_fresh(batch, inputs: DecodeInputs, reqs: list[Req], table: ReqToTokenTable) -> None:
    fresh = DecodeInputs.for_requests(reqs, table.table.shape[1], None)
    assert torch.equal(inputs.positions, fresh.positions) and torch.equal(inputs.new_cells, fresh.new_cells)
    assert batch.forward.positions.tolist() == [r.kv_len for r in reqs]
    assert batch.forward.input_ids.tolist() == [r.output_ids[-1] for r in reqs]
    assert batch.forward.seq_lens == [r.kv_len + 1 for r in reqs]
    slots = batch.forward.out_cache_loc.tolist()
    for req, slot, kv_row in zip(reqs, slots, batch.forward.kv_indices):
        assert int(table.table[req.table_row, req.kv_len]) == slot  # the new token's slot is recorded
        assert int(kv_row[req.kv_len]) == slot  # and read back by this step's attention


def test_decode_inputs_are_reused_while_the_batch_only_grows_by_one_token():
    pool = KVPool(1, 256, 1, 2, torch.float32, "cpu")
    table = ReqToTokenTable(4, 64, "cpu")
    reqs = running_requests(table, [3, 9, 5])
    batch, first = build_decode(pool, table, reqs)
    check_matches_fresh(batch, first, reqs, table)

    advance(reqs)
    batch, second = build_decode(pool, table, reqs, first)
    assert second.rows_t is first.rows_t  # reused, not rebuilt
    check_matches_fresh(batch, second, reqs, table)

    advance(reqs[1:])  # a request left the batch: rebuilt
    batch, third = build_decode(pool, table, reqs[1:], second)
    assert third.rows_t is not second.rows_t
    check_matches_fresh(batch, third, reqs[1:], table)

    advance(reqs[1:], tokens=4)  # same requests, but jump-forward appended several tokens: rebuilt
    batch, fourth = build_decode(pool, table, reqs[1:], third)
    assert fourth.rows_t is not third.rows_t
    check_matches_fresh(batch, fourth, reqs[1:], table)
