"""Decode attention over a prefix the whole batch shares (read once) vs the plain path."""

import pytest
import torch

from runtime.cache.kv_pool import KVPool
from runtime.engine.forward_batch import ForwardBatch, ForwardMode
from runtime.layers.attention import DECODE_KV_ALIGN, MIN_SHARED_PREFIX, TorchNativeBackend, _shared_prefix_len


def test_shared_prefix_len():
    lens = torch.tensor([129, 160])
    same = torch.arange(1, 161).repeat(2, 1)
    assert _shared_prefix_len(same, lens, 2) == 128  # never the shortest request's new token
    assert _shared_prefix_len(same, lens - 1, 2) == 64  # cut at a multiple of DECODE_KV_ALIGN
    diverge = same.clone()
    diverge[1, 100:] += 1000
    assert _shared_prefix_len(diverge, lens, 2) == 64
    diverge[1, MIN_SHARED_PREFIX - 1] += 1000
    assert _shared_prefix_len(diverge, lens, 2) == 0  # too short to pay
    assert _shared_prefix_len(same[:1], lens[:1], 1) == 0  # one request: nothing shared
    assert _shared_prefix_len(same, lens, 1) == 0  # two verify rows of one request: nothing shared


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (9, 3)])
def test_cascade_equals_plain_decode(heads, kv_heads):
    torch.manual_seed(heads)
    dim, shared, tails = 16, 2 * DECODE_KV_ALIGN, [1, 5, 12]
    pool = KVPool(1, 256, kv_heads, dim, torch.float64, "cpu")
    pool.k_buffers[0].normal_()
    pool.v_buffers[0].normal_()
    attn = TorchNativeBackend(pool, heads, kv_heads, dim)
    prefix = torch.arange(1, shared + 4)  # cut back to `shared`, a multiple of DECODE_KV_ALIGN
    shared_slots = shared + 3
    rows, start = [], shared_slots + 1
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
    gather = [pool.rows(0, value, md.kv_flat).view(kv_heads, len(tails), md.max_kv, dim) for value in (False, True)]
    shared_kv = tuple(pool.rows(0, value, md.shared_slots).view(kv_heads, shared, dim) for value in (False, True))
    assert torch.equal(shared_kv[0], buffers[0].narrow(1, *md.shared_range))  # the in-place view reads the same
    qg = q.view(len(tails), kv_heads, heads // kv_heads, dim).transpose(0, 1)  # [Hkv, B, G, D]
    got = attn._decode_cascade(qg, shared_kv, *gather, md.decode_bias)
    # the plain path over each request's whole KV
    full = [b.index_select(1, kv.reshape(-1)).view(kv_heads, len(tails), width, dim) for b in buffers]
    bias = torch.zeros(len(tails), 1, width).masked_fill_(torch.arange(width) >= lens[:, None, None], float("-inf"))
    want = attn._decode(qg, *full, bias)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _forward_batch(mode, kv_indices, extend_lens, seq_lens, out_cache_loc):
    return ForwardBatch(mode=mode, input_ids=torch.zeros(sum(extend_lens), dtype=torch.int64), positions=None,
                        out_cache_loc=out_cache_loc, extend_lens=extend_lens, seq_lens=seq_lens,
                        kv_indices=kv_indices, logits_indices=None)


@pytest.mark.parametrize("prefix_len", [40, 63, 64, 200, 333])
@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("slot_kernels", [False, True], ids=["gather", "slot-kernels"])
def test_verify_rows_get_the_bits_of_decode_steps(prefix_len, share, slot_kernels):
    """A verify step's tokens (bf16) come out bit-identical to the same tokens decoded one
    step at a time, next to another request of a different length (share: one that shares
    request 0's prefix, so both kinds of step of the gather path read it once), on the
    torch gather path and on the CPU slot kernels."""
    torch.manual_seed(prefix_len)
    heads, kv_heads, dim, k = 9, 3, 64, 5
    pool = KVPool(1, 1024, kv_heads, dim, torch.bfloat16, "cpu")
    attn = TorchNativeBackend(pool, heads, kv_heads, dim)
    assert attn.slot_kernels, "the CPU slot kernels did not build (see the log's warning)"
    attn.slot_kernels = slot_kernels
    own = [prefix_len + k + 1, 97]  # request 0 verifies k + 1 tokens, request 1 decodes one
    slots = [torch.arange(1, own[0] + 1), torch.arange(600, 600 + own[1])]
    if share:
        slots[1] = torch.cat([slots[0][:prefix_len], slots[1]])
    lens = [len(s) for s in slots]
    pool.k_buffers[0].normal_()
    pool.v_buffers[0].normal_()
    q = torch.randn(k + 2, heads, dim, dtype=torch.bfloat16)
    kv = torch.stack([torch.nn.functional.pad(s, (0, max(lens) - len(s))) for s in slots])
    written = torch.cat([slots[0][-(k + 1):], slots[1][-1:]])
    new_kv = [b[0].transpose(0, 1)[written] for b in (pool.k_buffers, pool.v_buffers)]  # [k + 2, Hkv, D]
    fb = _forward_batch(ForwardMode.VERIFY, kv, [k + 1, 1], lens, written)
    attn.init_forward_metadata(fb)
    if not slot_kernels:
        assert (fb.attn_metadata.shared_slots is not None) == (share and prefix_len >= MIN_SHARED_PREFIX)
    got = attn.forward(q, *new_kv, 0, fb)  # [k + 2, H * D]
    for j in range(k + 1):  # token j of request 0 over prefix + j + 1 keys, decoded beside request 1
        n = lens[0] - k + j
        step = [slots[0][:n], slots[1]]
        kv_step = torch.stack([torch.nn.functional.pad(s, (0, max(n, lens[1]) - len(s))) for s in step])
        rows = torch.tensor([j, k + 1])
        one = _forward_batch(ForwardMode.DECODE, kv_step, [1, 1], [n, lens[1]], written[rows])
        attn.init_forward_metadata(one)
        want = attn.forward(q[rows], new_kv[0][rows], new_kv[1][rows], 0, one)
        assert torch.equal(got[j], want[0]), j
        assert torch.equal(got[k + 1], want[1]), j
