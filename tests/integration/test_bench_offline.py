"""`radixflow bench offline`'s engine side on the tiny model: the numbers it reports
come from real steps (token counts add up, per-step timings are recorded)."""

from runtime.bench.offline import make_workload, run_ours


def test_run_ours_reports_real_steps(tiny_model_path):
    workload = make_workload(6, (8, 40), (4, 12), seed=0)
    report = run_ours(str(tiny_model_path), "float32", workload, max_running=4)
    assert report["output_tokens"] == sum(o for _, o in workload)
    # 6 requests, at most 4 at a time: at least the longest output's worth of decode steps
    assert report["decode_steps"] >= max(o for _, o in workload) - 1
    assert report["extend_steps"] >= 2
    assert report["sched_overhead_ms_per_decode_step"] > 0
    assert report["loop_ms_between_decode_steps"] >= 0
    buckets = report["sched_overhead_ms_by_batch_size"]
    assert sum(b["steps"] for b in buckets.values()) == report["decode_steps"]
    assert report["sched_overhead_ms_steps_finishing_requests"] > 0  # every request ends in a decode step
