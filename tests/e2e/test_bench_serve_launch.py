"""`radixflow bench serve --quick` against a `radixflow serve` it starts itself: every
workload runs, and what it reports is what the server did."""

from __future__ import annotations

import json

from runtime.bench.serve.workloads import WORKLOADS
from runtime.cli import main


def test_bench_serve_quick_launches_a_server_and_reports_every_workload(tmp_path, tiny_model_path):
    out = tmp_path / "serve.json"
    main(["bench", "serve", "--quick", "--launch", "--model-path", str(tiny_model_path), "--no-progress",
          "--workloads", ",".join(WORKLOADS), "--max-concurrency", "1,3", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["command"].startswith("radixflow bench serve ") and "--quick" in report["command"]
    assert report["versions"]["radixflow"] and report["machine"]
    rows = {(r["workload"], r["max_concurrency"]): r for r in report["rows"]}
    assert set(rows) == {(w, c) for w in WORKLOADS for c in (1, 3)}
    for (workload, _), row in rows.items():
        s = row["summary"]
        assert s["errors"] == 0 and s["successes"] == s["requests"] > 0, (workload, s["first_error"])
        assert s["output_token_throughput"] > 0 and s["ttft_s"]["median"] > 0 and s["e2e_s"]["p99"] > 0
        assert s["cache_hit_rate"] is not None  # radixflow reports cached_tokens in usage
    for c in (1, 3):
        assert rows["json-schema", c]["summary"]["valid_rate"] == 1.0  # grammar-enforced, under the budget
        assert rows["tool-agent", c]["summary"]["tool_calls"] > 0  # tool_choice "required" is enforced
        assert rows["shared-prefix", c]["summary"]["cache_hit_rate"] > 0.3
        assert rows["multi-turn", c]["summary"]["requests"] == 4  # 2 conversations x 2 turns
    md = out.with_suffix(".md").read_text()
    assert md.startswith("Written by `radixflow bench serve") and "| radixflow | tool-agent | 3 |" in md
    for name in ("serve-latency-cdf.png", "serve-throughput.png"):
        assert (tmp_path / name).stat().st_size > 10_000
