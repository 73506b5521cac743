"""Decode attention over a prefix the whole batch shares (read once) vs the plain path."""

import pytest
import torch

from runtime.cache.kv_pool import KVPool
from runtime.engine.forward_batch import ForwardBatch, ForwardMode
from runtime.layers.attention import DECODE_KV_ALIGN, MIN_SHARED_PREFIX, TorchNativeBackend, _shared_prefix_len


def test_shared_prefix_len():
    lens = torch.tensor([50, 60])
    same = torch.arange(1, 61).repeat(2, 1)
    assert _shared_prefix_len(same, lens) == 49  # never the shortest request's new token
    diverge = same.clone()
    diverge[1, 40:] += 100
    assert _shared_prefix_len(diverge, lens) == 40
    diverge[1, MIN_SHARED_PREFIX - 1] += 100
    assert _shared_prefix_len(diverge, lens) == 0  # too short to pay
    assert _shared_prefix_len(same[:1], lens[:1]) == 0  # one request: nothing shared


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (9, 3)])
def test_cascade_equals_plain_decode(heads, kv_heads):
    torch.manual_seed(heads)
    dim, shared, tails = 16, 70, [1, 5, 12]
    pool = KVPool(1, 256, kv_heads, dim, torch.float64, "cpu")
    pool.k_buffers[0].normal_()
    pool.v_buffers[0].normal_()
    attn = TorchNativeBackend(pool, heads, kv_heads, dim)
    prefix = torch.arange(1, shared + 1)
    rows, start = [], shared + 1
    for t in tails:
        rows.append(torch.cat([prefix, torch.arange(start, start + t)]))
        start += t
    width = max(len(r) for r in rows)
    kv = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
    lens = torch.tensor([len(r) for r in rows])
    md = attn._decode_metadata(kv, lens, "cpu")
    padded = -(-width // DECODE_KV_ALIGN) * DECODE_KV_ALIGN
    assert md.shared_slots is not None and len(md.shared_slots) == kv_heads * shared and md.max_kv == padded - shared
    assert md.shared_range == (1, shared)  # consecutive slots: read in place
    scattered = kv.clone()
    scattered[:, [3, 4]] = scattered[:, [4, 3]]
    assert attn._decode_metadata(scattered, lens, "cpu").shared_range is None
    q = torch.randn(len(tails), heads, dim, dtype=torch.float64)
    buffers = (pool.k_buffers[0], pool.v_buffers[0])
    gather = [attn._gather(b, md.kv_flat).view(kv_heads, len(tails), md.max_kv, dim) for b in buffers]
    shared_kv = tuple(attn._gather(b, md.shared_slots).view(kv_heads, shared, dim) for b in buffers)
    assert torch.equal(shared_kv[0], buffers[0].narrow(1, *md.shared_range))  # the in-place view reads the same
    got = attn._decode_cascade(q, shared_kv, *gather, md.decode_bias)
    # the plain path over each request's whole KV
    full = [b.index_select(1, kv.reshape(-1)).view(kv_heads, len(tails), width, dim) for b in buffers]
    bias = torch.zeros(len(tails), 1, width).masked_fill_(torch.arange(width) >= lens[:, None, None], float("-inf"))
    want = attn._decode(q, *full, bias)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _forward_batch(mode, kv_indices, extend_lens, seq_lens, out_cache_loc):
    return ForwardBatch(mode=mode, input_ids=torch.zeros(sum(extend_lens), dtype=torch.int64), positions=None,
                        out_cache_loc=out_cache_loc, extend_lens=extend_lens, seq_lens=seq_lens,
                        kv_indices=kv_indices, logits_indices=None)


@pytest.mark.parametrize("prefix_len", [40, 63, 64, 200, 333])
def test_verify_rows_get_the_bits_of_decode_steps(prefix_len):
    """A verify step's tokens (bf16) come out bit-identical to the same tokens decoded one
    step at a time, next to another request of a different length."""
    torch.manual_seed(prefix_len)
    heads, kv_heads, dim, k = 9, 3, 64, 5
    pool = KVPool(1, 1024, kv_heads, dim, torch.bfloat16, "cpu")
    attn = TorchNativeBackend(pool, heads, kv_heads, dim)
    lens = [prefix_len + k + 1, 97]  # request 0 verifies k + 1 tokens, request 1 decodes one
    slots = [torch.arange(1, lens[0] + 1), torch.arange(600, 600 + lens[1])]
    new_k = torch.randn(sum(lens), kv_heads, dim, dtype=torch.bfloat16)
    new_v = torch.randn(sum(lens), kv_heads, dim, dtype=torch.bfloat16)
    q = torch.randn(k + 2, heads, dim, dtype=torch.bfloat16)
    everything = torch.cat(slots)
    pool.k_buffers[0].index_copy_(1, everything, new_k.transpose(0, 1))
    pool.v_buffers[0].index_copy_(1, everything, new_v.transpose(0, 1))
    kv = torch.stack([torch.nn.functional.pad(s, (0, max(lens) - len(s))) for s in slots])
    written = torch.cat([slots[0][-(k + 1):], slots[1][-1:]])
    fb = _forward_batch(ForwardMode.VERIFY, kv, [k + 1, 1], lens, written)
    attn.init_forward_metadata(fb)
    sel = torch.cat([torch.arange(lens[0] - k - 1, lens[0]), lens[0] + torch.tensor([lens[1] - 1])])
    got = attn.forward(q, new_k[sel], new_v[sel], 0, fb)  # [k + 2, H * D]
    for j in range(k + 1):  # token j of request 0, decoded alone over prefix + j + 1 keys
        n = lens[0] - k + j
        one = _forward_batch(ForwardMode.DECODE, slots[0][:n][None], [1], [n], slots[0][n - 1:n])
        attn.init_forward_metadata(one)
        want = attn.forward(q[j:j + 1], new_k[n - 1:n], new_v[n - 1:n], 0, one)
        assert torch.equal(got[j:j + 1], want), j
