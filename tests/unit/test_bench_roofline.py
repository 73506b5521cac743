"""`radixflow bench roofline`: the bytes and FLOPs it charges each phase, and a real run."""

from __future__ import annotations

import json

import pytest
import torch

from runtime.bench.roofline import MODEL_PHASES, ModelUnderTest, phase_rows
from runtime.cli import main
from runtime.config import ModelConfig


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return ModelUnderTest(str(tiny_model_path), "float32")


def test_costs_count_each_phases_weights_and_kv(model, tiny_model_path):
    mc = ModelConfig.from_hf(tiny_model_path)
    h, q, kv = mc.hidden_size, mc.num_heads * mc.head_dim, mc.num_kv_heads * mc.head_dim
    bias = (q + 2 * kv) if model.model.model.layers[0].self_attn.qkv_proj.bias is not None else 0  # qwen2: q|k|v bias
    attn_params = mc.num_layers * (h * (q + 2 * kv) + bias + q * h)
    mlp_params = mc.num_layers * 3 * h * mc.intermediate_size
    costs = model.costs(tokens=4, kv_reads=4 * 101, attn_pairs=4 * 101, logit_rows=4)
    assert costs["attention projections"] == (attn_params * 4, 2 * 4 * attn_params)
    assert costs["MLP"] == (mlp_params * 4, 2 * 4 * mlp_params)
    assert costs["lm_head"] == (mc.vocab_size * h * 4, 2 * 4 * mc.vocab_size * h)
    kv_bytes = mc.num_layers * 404 * 2 * kv * 4  # K and V of every read token, every layer, fp32
    assert costs["attention"] == (kv_bytes, mc.num_layers * 404 * 4 * q)


def test_phase_roofline_is_the_slower_of_memory_and_compute():
    machine = {"read_bandwidth_gb_s": 10.0, "gemm_gflop_s": 100.0}
    rows = phase_rows({"MLP": (1e9, 1e9), "attention": (1e6, 1e11)}, {"MLP": 0.5}, machine)
    by = {r["phase"]: r for r in rows}
    assert by["MLP"]["roofline_s"] == pytest.approx(0.1)  # 1 GB at 10 GB/s beats 1 GFLOP at 100
    assert by["attention"]["roofline_s"] == pytest.approx(1.0)  # compute-bound
    assert by["norms, rotary, residual"]["roofline_s"] == 0.0
    assert [r["phase"] for r in rows] == list(MODEL_PHASES)


def test_timed_step_matches_the_untimed_model(model):
    """The timers change nothing: the decode step's phases add up to its total, and the
    logits equal a plain forward over the same batch."""
    times = model.time_step([33, 20], [1, 1], steps=2)
    assert times["total"] > 0 and all(times.get(p, 0.0) >= 0 for p in MODEL_PHASES)
    assert sum(times.get(p, 0.0) for p in MODEL_PHASES) == pytest.approx(times["total"], rel=1e-6)
    fb = model._batch([33, 20], [1, 1])
    with torch.inference_mode():
        model.attn.init_forward_metadata(fb)
        hidden = model.model(fb.input_ids, fb.positions, fb, model.attn)
        timed_model = model._timed_attention()
        model.attn.init_forward_metadata(fb)
        timed = model.model(fb.input_ids, fb.positions, fb, timed_model)
    torch.testing.assert_close(hidden, timed)


def test_roofline_command_writes_json_and_markdown(tiny_model_path, tmp_path):
    out = tmp_path / "roofline.json"
    main(["bench", "roofline", "--model", str(tiny_model_path), "--dtype", "float32", "--batch-sizes", "1,2",
          "--context", "64", "--prefill-tokens", "32", "--threads", "1", "--steps", "2", "--no-server",
          "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["command"].startswith("radixflow bench roofline ")
    assert [(r["kind"], r["batch"]) for r in report["runs"]] == [("decode", 1), ("decode", 2), ("prefill", 1)]
    for run in report["runs"]:
        assert run["roofline_s"] > 0 and run["ours_s"] > 0
        assert run["ratio"] == pytest.approx(run["ours_s"] / run["roofline_s"])
    md = out.with_suffix(".md").read_text()
    assert "| decode | 1 | 2 |" in md and "| MLP |" in md
    for run in report["runs"][:2]:  # decode: both attention paths timed, the slot kernels left on
        paths = run["attention_paths"]
        assert set(paths) == {"slot kernels", "gather"} and all(p["attention"] > 0 for p in paths.values())
    assert "attention ms: slots / gather" in md
