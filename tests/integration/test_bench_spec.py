"""`radixflow bench spec` end to end on the tiny demo model (structure and identity; the
speed-ups that matter are measured on the real model, docs/bench/spec.json)."""

import json

from runtime.cli import main
from runtime.demo.checkpoint import demo_model_path


def test_bench_spec_writes_results_with_identical_outputs(tmp_path):
    out = tmp_path / "spec.json"
    main(["bench", "spec", "--model-path", str(demo_model_path("qwen2", "tiny", "float32")),
          "--algorithms", "ngram,auto", "--batch-sizes", "1,2", "--max-new-tokens", "12", "--min-requests", "2",
          "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["command"].startswith("radixflow bench spec ")
    assert set(report["workloads"]) == {"json-extraction", "rag-quote", "code-edit", "tool-loop", "free-chat"}
    for workload, cells in report["workloads"].items():
        assert set(cells) == {"1", "2"}
        for label in ("off", "ngram", "auto"):
            cell = cells["1"][label]
            assert cell["identical"] == cell["of"] >= 2, (workload, label)  # batch 1: the same tokens
            assert cell["output_tokens"] > 0 and cell["tokens_per_s"] > 0
    assert report["workloads"]["tool-loop"]["1"]["off"]["of"] == 2 * 3  # three steps per conversation
    assert any(c["drafted_requests"] for cells in report["workloads"].values() for c in cells["1"].values())
    assert [f["what"].split(",")[0] for f in report["floors"]] == ["json-extraction", "code-edit",
                                                                     "free-chat (no copying)", "free-chat (no copying)"]
    assert "| floor | reached | met |" in out.with_suffix(".md").read_text()
