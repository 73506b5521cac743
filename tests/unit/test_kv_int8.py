"""The int8 KV pool (per token and head scales) against the float pool."""

import pytest
import torch

from runtime.cache.kv_pool import KVPool
from runtime.engine.forward_batch import ForwardBatch, ForwardMode
from runtime.layers.attention import TorchNativeBackend


def test_int8_vectors_round_trip_within_half_a_step():
    pool = KVPool(1, 64, 2, 16, torch.float32, "cpu", int8=True)
    k, v = torch.randn(5, 2, 16), torch.randn(5, 2, 16) * 3
    slots = torch.tensor([3, 9, 10, 11, 40])
    pool.write(0, slots, k, v)
    assert pool.k_buffers[0].dtype == torch.int8 and pool.k_scales[0].shape == (2, 64)
    for value, x in ((False, k), (True, v)):
        got = pool.slot_range(0, value, 0, 64)[:, slots].transpose(0, 1)  # [5, Hkv, D]
        step = x.abs().amax(-1, keepdim=True) / 127
        assert ((got - x).abs() <= 0.5 * step * (1 + 1e-5)).all()
        rows = torch.arange(2)[:, None] * 64 + slots[None, :]  # head-major flat rows
        assert torch.equal(pool.rows(0, value, rows.reshape(-1)).view(2, 5, 16).transpose(0, 1), got)
    assert not pool.slot_range(0, False, 0, 1).any()  # the padding page reads as zeros
    assert KVPool.bytes_per_token(30, 3, 64, torch.bfloat16, True) < 0.6 * KVPool.bytes_per_token(
        30, 3, 64, torch.bfloat16, False)


@pytest.mark.parametrize("mode", ["extend", "decode"])
def test_attention_over_int8_kv_is_close_to_float(mode):
    torch.manual_seed(0)
    heads, kv_heads, dim, lens = 8, 2, 32, [70, 33, 150]
    pools = {int8: KVPool(1, 512, kv_heads, dim, torch.float32, "cpu", int8=int8) for int8 in (False, True)}
    slots = [torch.arange(1, 71), torch.arange(100, 133), torch.arange(200, 350)]
    kv = torch.stack([torch.nn.functional.pad(s, (0, 150 - len(s))) for s in slots])
    everything = torch.cat(slots)
    k, v = torch.randn(len(everything), kv_heads, dim), torch.randn(len(everything), kv_heads, dim)
    outs = {}
    for int8, pool in pools.items():
        attn = TorchNativeBackend(pool, heads, kv_heads, dim)
        if mode == "extend":  # every token new: written by this forward, attended causally
            q = torch.randn(len(everything), heads, dim, generator=torch.Generator().manual_seed(1))
            fb = ForwardBatch(mode=ForwardMode.EXTEND, input_ids=torch.zeros(len(everything), dtype=torch.int64),
                              positions=None, out_cache_loc=everything, extend_lens=lens, seq_lens=lens,
                              kv_indices=kv, logits_indices=None)
            attn.init_forward_metadata(fb)
            outs[int8] = attn.forward(q, k, v, 0, fb)
        else:  # the prefix already in the pool, one new token each
            last = torch.tensor([s[-1] for s in slots])
            mask = ~torch.isin(everything, last)
            pool.write(0, everything[mask], k[mask], v[mask])
            q = torch.randn(3, heads, dim, generator=torch.Generator().manual_seed(1))
            fb = ForwardBatch(mode=ForwardMode.DECODE, input_ids=torch.zeros(3, dtype=torch.int64), positions=None,
                              out_cache_loc=last, extend_lens=[1, 1, 1], seq_lens=lens, kv_indices=kv,
                              logits_indices=None)
            attn.init_forward_metadata(fb)
            outs[int8] = attn.forward(q, k[~mask], v[~mask], 0, fb)
    err = (outs[True] - outs[False]).abs().max() / outs[False].abs().max()
    assert 0 < err < 2e-2, err  # int8 vectors: ~0.4% per element, averaged by attention
