"""The engine on the Triton attention backends (runtime/kernels/backend.py), CPU:
`triton-reference` (the same metadata and calls, on the kernels' torch references) across
the scheduling situations of test_parity, the cascade and verify steps; `triton` itself (the
kernels under TRITON_INTERPRET=1, slow) on a small batch that runs every kernel."""

import pytest

from runtime.demo.checkpoint import demo_model_path
from runtime.kernels import backend as triton_backend
from tests.helpers import hf_greedy, make_core, random_prompts, run_core, without_step_timing

NEW_TOKENS = 16
GREEDY = {"max_new_tokens": NEW_TOKENS, "temperature": 0.0}
SCENARIOS = {
    "together": dict(options={}, stagger=0),
    "staggered": dict(options={}, stagger=3),
    "chunked-64": dict(options={"chunked_prefill_size": 64, "max_prefill_tokens": 128}, stagger=0),
    "paged-radix": dict(options={"page_size": 16}, stagger=2),
}


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def arch_case(request):
    path = demo_model_path(request.param, "tiny", "float32")
    prompts = random_prompts(seed=11)
    return request.param, path, prompts, [hf_greedy(path, p, NEW_TOKENS) for p in prompts]


def shared_prefix_case(arch: str, tails=(3, 9, 17, 30)):
    """Prompts behind one 130-token prefix (cached first, so their decode rows share slots)."""
    path = demo_model_path(arch, "tiny", "float32")
    prefix = random_prompts(lens=[130], seed=5)[0]
    prompts = [prefix + tail for tail in random_prompts(lens=list(tails), seed=6)]
    return path, prefix, prompts


def record_decode_calls(core, monkeypatch) -> list:
    """Each decode_attention call's shared-prefix length (0 without a cascade)."""
    calls, attn = [], core.runner.attn
    original = attn.decode_attention

    def recording(*args, shared_slots=None, **kwargs):
        calls.append(0 if shared_slots is None else shared_slots.shape[0])
        return original(*args, shared_slots=shared_slots, **kwargs)

    monkeypatch.setattr(attn, "decode_attention", recording)
    return calls


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_reference_backend_matches_transformers(arch_case, scenario):
    arch, path, prompts, refs = arch_case
    spec = SCENARIOS[scenario]
    core = make_core(path, attention_backend="triton-reference", **spec["options"])
    assert isinstance(core.runner.attn, triton_backend.TritonReferenceBackend)
    got = run_core(core, prompts, GREEDY, stagger_steps=spec["stagger"], return_logprob=True)
    for i, (ref_ids, ref_lps) in enumerate(refs):
        assert got[f"r{i}"]["output_ids"] == ref_ids, f"{arch}/{scenario}: prompt {i} diverged"
        assert max(abs(a - b) for a, b in zip(got[f"r{i}"]["logprobs"], ref_lps)) < 1e-4
    core.scheduler.check_no_leaks()


def test_reference_backend_cascade_over_a_shared_prefix(monkeypatch):
    path, prefix, prompts = shared_prefix_case("llama")
    refs = [hf_greedy(path, p, NEW_TOKENS)[0] for p in prompts]
    core = make_core(path, attention_backend="triton-reference")
    calls = record_decode_calls(core, monkeypatch)
    run_core(core, [prefix], {"max_new_tokens": 1, "temperature": 0.0})
    got = run_core(core, prompts, GREEDY)
    assert 128 in calls, f"decode steps should read the 128 shared slots once (cascade); saw {set(calls)}"
    assert [got[f"r{i}"]["output_ids"] for i in range(len(prompts))] == refs
    core.scheduler.check_no_leaks()


def test_reference_backend_verify_steps_equal_plain_decoding():
    """Speculative verify rows (one decode row per drafted token) on the reference backend:
    greedy outputs identical to decoding without drafts."""
    path = demo_model_path("qwen2", "tiny", "float32")
    chunk = random_prompts(lens=[60], seed=3)[0]
    prompts = [chunk + chunk[:30], chunk[:20] + chunk[:20]] + random_prompts(lens=(7, 40), seed=4)
    params = {"max_new_tokens": 40, "temperature": 0.0, "ignore_eos": True}
    plain = run_core(make_core(path, attention_backend="triton-reference"), prompts, params)
    core = without_step_timing(make_core(path, attention_backend="triton-reference", speculative_algorithm="ngram"))
    drafted = run_core(core, prompts, params)
    assert core.scheduler.stats["verify_steps"] > 0
    for rid in plain:
        assert drafted[rid]["output_ids"] == plain[rid]["output_ids"], rid
    core.scheduler.check_no_leaks()


@pytest.mark.kernels
def test_triton_kernels_in_the_engine_match_transformers(monkeypatch):
    """The real kernels (interpreted on CPU): extend over an empty and a cached prefix,
    decode with and without the cascade, page size 16; token-identical in float32."""
    path, prefix, prompts = shared_prefix_case("qwen2", tails=(2, 21))
    prompts.append(random_prompts(lens=[11], seed=9)[0])  # shares nothing: plain decode rows
    new_tokens = 6
    refs = [hf_greedy(path, p, new_tokens)[0] for p in prompts]
    core = make_core(path, attention_backend="triton", page_size=16)
    assert type(core.runner.attn) is triton_backend.TritonBackend
    calls = record_decode_calls(core, monkeypatch)
    run_core(core, [prefix], {"max_new_tokens": 1, "temperature": 0.0})
    together = run_core(core, prompts[:2], {"max_new_tokens": new_tokens, "temperature": 0.0})
    assert 128 in calls, f"the two prompts behind the cached prefix should decode by cascade; saw {set(calls)}"
    alone = run_core(core, prompts[2:], {"max_new_tokens": new_tokens, "temperature": 0.0})
    got = {**together, "r2": alone["r0"]}
    assert [got[f"r{i}"]["output_ids"] for i in range(3)] == refs
    core.scheduler.check_no_leaks()


def test_triton_backend_refuses_what_it_cannot_run(tiny_model_path, monkeypatch):
    with pytest.raises(ValueError, match="int8 needs --attention-backend torch_native"):
        make_core(tiny_model_path, attention_backend="triton-reference", kv_cache_dtype="int8")
    monkeypatch.setattr(triton_backend, "available", lambda device: False)  # CPU without the interpreter
    with pytest.raises(ValueError, match="attention backend triton needs CUDA"):
        make_core(tiny_model_path, attention_backend="triton")


@pytest.mark.parametrize("backend", ["triton-reference", pytest.param("triton", marks=pytest.mark.kernels)])
def test_decode_graph_buffers_replay_any_batch(backend, monkeypatch):
    """The CUDA-graph decode path on CPU, uncaptured (extra decode_graphs=eager): static
    buffers padded to the captured sizes (3 rows run as 4), a split count fixed by the
    context length, no cascade even behind a shared prefix; outputs equal to transformers."""
    path, prefix, prompts = shared_prefix_case("qwen2", tails=(2, 21))
    prompts.append(random_prompts(lens=[11], seed=9)[0])
    new_tokens = 12 if backend == "triton-reference" else 4
    refs = [hf_greedy(path, p, new_tokens)[0] for p in prompts]
    core = make_core(path, attention_backend=backend, page_size=4, cuda_graph_max_bs=4,
                     extra={"decode_graphs": "eager"})
    graphs = core.runner.decode_graphs
    assert graphs is not None and graphs.sizes == [1, 2, 4] and graphs.eager
    calls = record_decode_calls(core, monkeypatch)
    padded = []
    original_forward = graphs._forward
    monkeypatch.setattr(graphs, "_forward", lambda bs: padded.append(bs) or original_forward(bs))
    run_core(core, [prefix], {"max_new_tokens": 1, "temperature": 0.0})
    got = run_core(core, prompts, {"max_new_tokens": new_tokens, "temperature": 0.0}, stagger_steps=1)
    assert [got[f"r{i}"]["output_ids"] for i in range(3)] == refs
    assert 4 in padded and set(padded) <= {1, 2, 4}, padded
    assert calls and set(calls) == {0}, "graph steps read the whole prefix per row (no cascade)"
    core.scheduler.check_no_leaks()


@pytest.mark.kernels
@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_fused_norm_and_rotary_kernels_match_transformers(arch):
    """The model's element-wise path on CUDA (extra fused_kernels: add+RMSNorm carrying
    the residual, rotary in place), interpreted here, with the triton attention backend."""
    path = demo_model_path(arch, "tiny", "float32")
    prompts = random_prompts(lens=(4, 37), seed=13)
    new_tokens = 5
    refs = [hf_greedy(path, p, new_tokens) for p in prompts]
    core = make_core(path, attention_backend="triton", extra={"fused_kernels": True})
    assert core.runner.model.elementwise.__name__ == "runtime.kernels.elementwise"
    got = run_core(core, prompts, {"max_new_tokens": new_tokens, "temperature": 0.0}, return_logprob=True)
    for i, (ref_ids, ref_lps) in enumerate(refs):
        assert got[f"r{i}"]["output_ids"] == ref_ids, f"{arch}: prompt {i}"
        assert max(abs(a - b) for a, b in zip(got[f"r{i}"]["logprobs"], ref_lps)) < 1e-4
    core.scheduler.check_no_leaks()
