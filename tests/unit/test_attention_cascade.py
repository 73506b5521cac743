"""Decode attention over a prefix the whole batch shares (read once) vs the plain path."""

import pytest
import torch

from runtime.cache.kv_pool import KVPool
from runtime.layers.attention import MIN_SHARED_PREFIX, TorchNativeBackend, _shared_prefix_len


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
    assert md.shared_slots is not None and len(md.shared_slots) == kv_heads * shared and md.max_kv == max(tails)
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
