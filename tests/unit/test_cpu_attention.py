"""The CPU slot kernels (runtime/kernels/cpu_attention.py) against their torch references,
and the attention backend on them against its gather path."""

import pytest
import torch

from runtime.cache.kv_pool import KVPool
from runtime.engine.forward_batch import ForwardBatch, ForwardMode
from runtime.kernels import cpu_attention, cpu_extension
from runtime.layers.attention import TorchNativeBackend


def test_the_extension_builds_here():
    # CI has gcc and ninja (a dependency): a silent fallback to the gather path would hide a regression
    assert cpu_extension.extension() is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (4, 4, 16), (8, 2, 128)])
def test_kernel_matches_reference(dtype, heads, kv_heads, dim):
    torch.manual_seed(heads * dim)
    slots, rows, width = 700, 6, 192
    k_buf, v_buf = (torch.randn(kv_heads, slots, dim).to(dtype) for _ in range(2))
    q = (3 * torch.randn(rows, heads + kv_heads, dim)).to(dtype)[:, :heads]  # a strided view, as the model passes
    idx = torch.randint(0, slots, (rows, width))
    lens = torch.tensor([1, 7, 64, 150, 191, width])
    out = cpu_attention.paged_decode_attention(q, k_buf, v_buf, idx, lens, 0.125)
    assert out.dtype == dtype and out.shape == (rows, heads, dim)
    want = cpu_attention.paged_decode_attention_reference(q.double(), k_buf.double(), v_buf.double(), idx, lens, 0.125)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    # a row's bits do not depend on the rows beside it, nor on the padding of idx
    for r in range(rows):
        n = int(lens[r])
        alone = cpu_attention.paged_decode_attention(q[r:r + 1], k_buf, v_buf, idx[r:r + 1, :max(n, 1)],
                                                     lens[r:r + 1], 0.125)
        assert torch.equal(alone[0], out[r])


def test_softmax_exp_is_accurate_far_out():
    """Scores that differ by up to ~100: the in-kernel exp underflows to 0 where it should,
    and the largest weights are right to float32 rounding."""
    q = torch.zeros(1, 1, 16)
    q[0, 0, 0] = 1.0
    k_buf = torch.zeros(1, 64, 16)
    k_buf[0, :, 0] = torch.linspace(-100, 3, 64)
    v_buf = torch.randn(1, 64, 16)
    idx, lens = torch.arange(64)[None], torch.tensor([64])
    out = cpu_attention.paged_decode_attention(q, k_buf, v_buf, idx, lens, 1.0)
    want = cpu_attention.paged_decode_attention_reference(q.double(), k_buf.double(), v_buf.double(), idx, lens, 1.0)
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)


def test_bad_lengths_are_refused():
    k_buf = torch.zeros(1, 10, 8)
    with pytest.raises(RuntimeError, match="outside"):
        cpu_attention.paged_decode_attention(torch.zeros(1, 1, 8), k_buf, k_buf, torch.zeros(1, 4, dtype=torch.int64),
                                             torch.tensor([5]), 1.0)


def _decode_batch(kv_indices, seq_lens, out_cache_loc):
    return ForwardBatch(mode=ForwardMode.DECODE, input_ids=torch.zeros(len(seq_lens), dtype=torch.int64),
                        positions=None, out_cache_loc=out_cache_loc, extend_lens=[1] * len(seq_lens),
                        seq_lens=seq_lens, kv_indices=kv_indices, logits_indices=None)


@pytest.mark.parametrize("shared", [0, 128])
def test_backend_on_slot_kernels_matches_the_gather_path_and_is_batch_invariant(shared):
    """float32 decode: the slot-kernel rows equal the gather path's (cascade included when
    the batch shares a prefix) to float32 rounding, and each row's bits are the same alone
    as in the batch."""
    torch.manual_seed(shared)
    heads, kv_heads, dim = 9, 3, 64
    pool = KVPool(1, 2048, kv_heads, dim, torch.float32, "cpu")
    pool.k_buffers[0].normal_()
    pool.v_buffers[0].normal_()
    attn = TorchNativeBackend(pool, heads, kv_heads, dim)
    assert attn.slot_kernels
    prefix = torch.arange(1, shared + 1)
    own = [torch.randperm(1000)[:n] + 1000 for n in (3, 90, 300)]  # scattered slots, as after churn
    rows = [torch.cat([prefix, o]) for o in own]
    lens = [len(r) for r in rows]
    kv = torch.stack([torch.nn.functional.pad(r, (0, max(lens) - len(r))) for r in rows])
    new = kv[torch.arange(3), torch.tensor(lens) - 1]
    q = torch.randn(3, heads, dim)
    k_new, v_new = (b[0].transpose(0, 1)[new] for b in (pool.k_buffers, pool.v_buffers))
    outs = {}
    for slot_kernels in (False, True):
        attn.slot_kernels = slot_kernels
        fb = _decode_batch(kv, lens, new)
        attn.init_forward_metadata(fb)
        outs[slot_kernels] = attn.forward(q, k_new, v_new, 0, fb)
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-5, atol=1e-5)
    for i in range(3):  # alone, with a narrower kv_indices
        fb = _decode_batch(kv[i:i + 1, :lens[i]], [lens[i]], new[i:i + 1])
        attn.init_forward_metadata(fb)
        assert torch.equal(attn.forward(q[i:i + 1], k_new[i:i + 1], v_new[i:i + 1], 0, fb)[0], outs[True][i]), i
