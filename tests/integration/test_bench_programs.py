"""`radixflow bench programs` runs its program workloads on the default model with the cache
on and off and writes JSON and markdown (a small scale: a smoke run, not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_programs_writes_json_and_markdown(tmp_path):
    out = tmp_path / "programs.json"
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "bench", "programs", "--scale", "0.1",
                           "--workloads", "few-shot,tree-of-thought,json", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["command"].startswith("radixflow bench programs ") and "--scale 0.1" in report["command"]
    assert report["model"] == "SmolLM2-135M-Instruct"
    rows = report["workloads"]
    assert set(rows) == {"few-shot", "tree-of-thought", "json"}
    for row in rows.values():
        on, off = row["cache_on"], row["cache_off"]
        assert on["programs"] == off["programs"] >= 2 and on["completion_tokens"] > 0
        assert off["hit_rate"] == 0.0 and row["speedup"] > 0
    assert rows["few-shot"]["cache_on"]["hit_rate"] > 0.5  # the shared k-shot block comes from the cache
    assert rows["tree-of-thought"]["cache_on"]["hit_rate"] > 0.5  # branches share their trunk
    markdown = out.with_suffix(".md").read_text()
    assert report["command"] in markdown and "| few-shot |" in markdown
