"""Each Triton kernel (runtime/kernels) against its torch reference on small shapes: under
Triton's interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1), natively on CUDA
(tests/gpu/run_gpu_check.sh). GQA ratios 1-8, head dims 64/128, page sizes 1 and 16, keys
from 1 to 2k, ragged batches, a prefix shared by the whole batch."""

import random

import pytest
import torch

from runtime.constrained.bitmask import apply_bitmask_, bitmask_words
from runtime.kernels import attention as A
from runtime.kernels import elementwise as E

pytestmark = pytest.mark.kernels
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (atol, rtol): float32 sums in another order; bf16 within ~2 units in the last place (the
# interpreter rounds float32 -> bf16 toward zero, the GPU and torch to nearest)
TOL = {torch.float32: (2e-5, 1e-5), torch.bfloat16: (2e-2, 1.6e-2), torch.float16: (4e-3, 2e-3)}
DTYPES = [torch.float32, torch.bfloat16]


def pool(num_kv_heads, head_dim, dtype, num_slots=4200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(num_kv_heads, num_slots, head_dim, generator=gen)
    v = torch.randn(num_kv_heads, num_slots, head_dim, generator=gen)
    return k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def allocate(lengths, page_size, num_slots=4200, seed=0):
    """kv_indices [B, max] for requests of these lengths, slots handed out in shuffled pages of
    page_size (page 0 is the pool's padding page, never handed out), padded with 0."""
    rng = random.Random(seed)
    pages = list(range(1, num_slots // page_size))
    rng.shuffle(pages)
    rows = []
    for n in lengths:
        need = -(-n // page_size)
        mine, pages = pages[:need], pages[need:]
        rows.append([p * page_size + j for p in mine for j in range(page_size)][:n])
    width = max(lengths)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], device=DEVICE)


def close(got, want, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.float().cpu(), want.float().cpu(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim", "lengths"), [
    (4, 4, 64, [1, 7, 33]),  # MHA, a one-key row
    (8, 2, 64, [300, 5, 64, 129]),  # G=4, ragged
    (8, 1, 128, [2048, 17]),  # G=8 (MQA), head dim 128, 2k keys
    (12, 4, 64, [31, 95]),  # G=3: a ratio that is not a power of two
])
def test_decode_attention(dtype, page_size, num_heads, num_kv_heads, head_dim, lengths):
    k_buf, v_buf = pool(num_kv_heads, head_dim, dtype)
    kv_indices = allocate(lengths, page_size)
    kv_lens = torch.tensor(lengths, device=DEVICE)
    q = torch.randn(len(lengths), num_heads, head_dim).to(DEVICE, dtype)
    scale = head_dim ** -0.5
    got = A.decode_attention(q, k_buf, v_buf, kv_indices, kv_lens, scale)
    close(got, A.decode_attention_reference(q, k_buf, v_buf, kv_indices, kv_lens, scale), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_lengths_do_not_depend_on_the_grid(dtype):
    """Fixed splits (as under a CUDA graph) for rows much shorter than the splits cover:
    empty splits weigh nothing."""
    k_buf, v_buf = pool(2, 64, dtype)
    kv_indices = allocate([1, 3, 40], 1)
    kv_lens = torch.tensor([1, 3, 40], device=DEVICE, dtype=torch.int32)
    q = torch.randn(3, 4, 64).to(DEVICE, dtype)
    got = A.decode_attention(q, k_buf, v_buf, kv_indices, kv_lens, 0.125, num_splits=A.MAX_SPLITS)
    close(got, A.decode_attention_reference(q, k_buf, v_buf, kv_indices, kv_lens, 0.125), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_heads", "num_kv_heads", "shared", "tails"), [
    (8, 2, 192, [1, 40, 7, 90, 2]),  # a system prompt shared by 5 rows
    (14, 2, 700, [1, 1]),  # G=7, a long document, rows that only add their new token
])
def test_decode_attention_with_a_shared_prefix(dtype, num_heads, num_kv_heads, shared, tails):
    k_buf, v_buf = pool(num_kv_heads, 64, dtype)
    slots = allocate([shared] + tails, 16)
    shared_slots, tail_indices = slots[0, :shared], slots[1:]
    kv_lens = torch.tensor(tails, device=DEVICE)
    q = torch.randn(len(tails), num_heads, 64).to(DEVICE, dtype)
    got = A.decode_attention(q, k_buf, v_buf, tail_indices, kv_lens, 0.125, shared_slots=shared_slots)
    want = A.decode_attention_reference(q, k_buf, v_buf, tail_indices, kv_lens, 0.125, shared_slots=shared_slots)
    close(got, want, dtype)
    # the same as each row reading prefix + tail on its own
    whole = torch.cat((shared_slots.expand(len(tails), -1), tail_indices), dim=1)
    close(got, A.decode_attention(q, k_buf, v_buf, whole, kv_lens + shared, 0.125), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim", "prefixes", "new"), [
    (4, 4, 64, [0], [45]),  # a fresh prompt: causal over itself only
    (8, 2, 64, [0, 100, 31, 7], [1, 20, 70, 16]),  # ragged: cached prefixes, a one-token extend
    (8, 1, 128, [2000], [40]),  # G=8, head dim 128, a 2k cached prefix
    (6, 2, 64, [64], [33]),  # G=3
])
def test_extend_attention(dtype, page_size, num_heads, num_kv_heads, head_dim, prefixes, new):
    k_buf, v_buf = pool(num_kv_heads, head_dim, dtype)
    kv_lens_list = [p + n for p, n in zip(prefixes, new)]
    kv_indices = allocate(kv_lens_list, page_size)
    kv_lens, q_lens = torch.tensor(kv_lens_list, device=DEVICE), torch.tensor(new, device=DEVICE)
    q_starts = torch.cumsum(q_lens, 0) - q_lens
    q = torch.randn(sum(new), num_heads, head_dim).to(DEVICE, dtype)
    args = (q, k_buf, v_buf, kv_indices, kv_lens, q_starts, q_lens, max(new), head_dim ** -0.5)
    close(A.extend_attention(*args), A.extend_attention_reference(*args), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extend_last_row_equals_decode(dtype):
    """The last new token of an extend attends exactly the keys a decode step would."""
    k_buf, v_buf = pool(2, 64, dtype)
    kv_indices = allocate([90], 16)
    q = torch.randn(10, 8, 64).to(DEVICE, dtype)
    ext = A.extend_attention(q, k_buf, v_buf, kv_indices, torch.tensor([90], device=DEVICE),
                             torch.tensor([0], device=DEVICE), torch.tensor([10], device=DEVICE), 10, 0.125)
    dec = A.decode_attention(q[-1:], k_buf, v_buf, kv_indices, torch.tensor([90], device=DEVICE), 0.125)
    close(ext[-1:], dec, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv(dtype):
    k_buf, v_buf = pool(2, 64, dtype)
    ref_k, ref_v = k_buf.clone(), v_buf.clone()
    fused = torch.randn(5, 8 + 2 * 2, 64).to(DEVICE, dtype)  # a q|k|v-like tensor: k, v are strided views
    k, v = fused[:, 8:10], fused[:, 10:12]
    slots = torch.tensor([3, 900, 17, 4100, 18], device=DEVICE)
    A.store_kv(k_buf, v_buf, slots, k, v)
    A.store_kv_reference(ref_k, ref_v, slots, k, v)
    assert torch.equal(k_buf, ref_k) and torch.equal(v_buf, ref_v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rmsnorm(dtype, with_residual):
    x = torch.randn(7, 576).to(DEVICE, dtype)  # SmolLM2's hidden size: not a power of two
    residual = torch.randn(7, 576).to(DEVICE, dtype) if with_residual else None
    weight = (1 + 0.1 * torch.randn(576)).to(DEVICE, dtype)
    got = E.add_rmsnorm(x, weight, 1e-5, None if residual is None else residual.clone())
    want = E.add_rmsnorm_reference(x, weight, 1e-5, None if residual is None else residual.clone())
    if with_residual:
        close(got[1], want[1], dtype)  # the residual stream: one rounding of the same sum
        got, want = got[0], want[0]
    close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rotary(dtype, head_dim):
    from runtime.layers.rotary import RotaryEmbedding

    rope = RotaryEmbedding(head_dim, 4096, 1e6, None)
    positions = torch.tensor([0, 5, 4095, 77, 1000])
    x = torch.randn(5, 10, head_dim).to(dtype)  # 8 query heads + 2 key heads rotated together
    want = E.rotary_reference_(x.clone(), rope.cos, rope.sin, positions)
    got = E.rotary_(x.clone().to(DEVICE), rope.cos.to(DEVICE), rope.sin.to(DEVICE), positions.to(DEVICE))
    close(got.cpu(), want, dtype)


def test_grammar_bitmask():
    """The kernel masks exactly what the torch path masks (runtime/constrained/bitmask.py)."""
    vocab = 5003  # not a multiple of 32: the last word is partial
    gen = torch.Generator().manual_seed(0)
    bitmask = torch.randint(-(2 ** 31), 2 ** 31 - 1, (3, bitmask_words(vocab)), dtype=torch.int32, generator=gen)
    logits = torch.randn(3, vocab, generator=gen)
    want = logits.clone()
    apply_bitmask_(want, bitmask)
    got = logits.to(DEVICE)
    E.apply_bitmask(got, bitmask.to(DEVICE))
    assert torch.equal(got.cpu(), want)
