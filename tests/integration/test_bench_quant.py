"""`radixflow bench quant` end to end on the tiny random model (tiny sizes): the command
writes its JSON + markdown with every section and the floors table."""

import json

from runtime.cli import main
from runtime.demo.checkpoint import demo_model_path


def test_bench_quant_writes_results(tmp_path):
    out = tmp_path / "quant.json"
    main(["bench", "quant", "--model-path", str(demo_model_path("qwen2", "tiny", "float32")),
          "--configs", "none,int8,int4", "--doc-chunks", "2", "--prompts", "3", "--greedy-prompts", "2",
          "--greedy-tokens", "6", "--decode-tokens", "6", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["command"].startswith("radixflow bench quant ")
    assert set(report["quality"]) == {"int8", "int4"} and set(report["speed"]) == {"1", "16"}
    for label in ("int8", "int4"):
        q = report["quality"][label]
        assert q["positions"] > 100 and q["mean_kl"] > 0 and 0 <= q["top1_agreement"] <= 1
        assert report["weight_mib"][label] < report["weight_mib"]["none"]
    assert report["greedy"]["none"] == {"identical": 2, "of": 2}
    assert all(c["tokens_per_s"] > 0 for cells in report["speed"].values() for c in cells.values())
    assert {r["layer"] for r in report["kernels"]} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"}
    assert [f["what"] for f in report["floors"]] == ["int8: decode speed-up at batch 1", "int8: top-1 agreement",
                                                     "int4: decode speed-up at batch 1", "int4: top-1 agreement"]
    assert "| floor | reached | met |" in out.with_suffix(".md").read_text()
