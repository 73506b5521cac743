"""`radixflow bench decode` (the GPU check's benchmark) on CPU: the tiny model, small sizes."""

import json

from transformers import AutoModelForCausalLM

from runtime.bench.decode import bytes_per_step
from runtime.cli import main
from runtime.demo.checkpoint import demo_model_path


def test_weight_bytes_are_the_checkpoints_parameters():
    for arch in ("qwen2", "llama"):  # tied and untied output heads
        path = str(demo_model_path(arch, "tiny", "float32"))
        model = AutoModelForCausalLM.from_pretrained(path)
        params = sum(p.numel() for p in model.parameters())
        if not model.config.tie_word_embeddings:  # the lookup reads B rows of the table, not all of it
            params -= model.model.embed_tokens.weight.numel()
        weights, kv = bytes_per_step(path, 2, batch=3, context=10)
        assert weights == 2 * params, arch
        cfg = model.config
        assert kv == 3 * 10 * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * 64 * 2


def test_bench_decode_writes_rows_and_floors(tmp_path, tiny_model_path, capsys):
    out = tmp_path / "decode.json"
    main(["bench", "decode", "--models", str(tiny_model_path), "--dtype", "float32", "--batch-sizes", "1,2",
          "--prompt-len", "8", "--steps", "6", "--peak-gb-s", "30", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["command"].startswith("radixflow bench decode ")
    runners = {(r["batch"], r["runner"]) for r in report["rows"]}
    assert runners == {(b, r) for b in (1, 2) for r in ("ours", "transformers generate")}
    for row in report["rows"]:
        assert row["step_ms"] > 0 and abs(row["tokens_per_s"] - row["batch"] * 1000 / row["step_ms"]) < 0.2
        expected = row["bytes_per_step"] / (row["step_ms"] / 1000) / 30e9
        assert abs(row["bandwidth_utilisation"] - expected) < 1e-3
    ours = [r for r in report["rows"] if r["runner"] == "ours"]
    assert all(r["steps"] >= 4 for r in ours), ours  # decode steps of exactly that batch were timed
    assert len(report["floors"]) == 1 and report["floors"][0]["what"].startswith("bandwidth utilisation at batch 1")
    assert "| batch | runner |" in out.with_suffix(".md").read_text()
