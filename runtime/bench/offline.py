"""`radixflow bench offline`: our Engine vs transformers `generate` on one mixed workload.

Both run the same requests (random prompt tokens, fixed output lengths, EOS ignored)
in one invocation, one after the other. transformers runs them in padded static
batches in arrival order: each batch is padded to its longest prompt and decodes
until its longest output; only the tokens each request asked for count as output.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

DEFAULT_OUT = "docs/bench/offline.json"


def add_parser(sub) -> None:
    p = sub.add_parser("offline", help="offline throughput vs transformers generate")
    p.add_argument("--model-path", default=None, help="default: the 'small' demo model in each dtype")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--prompt-len", type=int, nargs=2, default=[32, 512])
    p.add_argument("--output-len", type=int, nargs=2, default=[16, 256])
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument("--max-running-requests", type=int, default=64)
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.set_defaults(func=run)


def make_workload(n: int, prompt_len: tuple[int, int], output_len: tuple[int, int], seed: int,
                  vocab: int = 151_643) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(*prompt_len))], rng.randint(*output_len))
            for _ in range(n)]


def run_ours(model_path: str, dtype: str, workload, max_running: int) -> dict:
    from runtime.core import GetStepTimes, ResetStepTimes
    from runtime.engine.api import Engine

    max_total = sum(len(p) + o for p, o in workload) + 1024
    with Engine(model_path, dtype=dtype, max_total_tokens=max_total, max_running_requests=max_running,
                disable_radix_cache=True, extra={"record_step_times": True}) as engine:
        engine.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 4})  # warm-up
        engine._control(ResetStepTimes())
        params = [{"max_new_tokens": o, "ignore_eos": True, "temperature": 0} for _, o in workload]
        start = time.perf_counter()
        results = engine.generate(input_ids=[p for p, _ in workload], sampling_params=params)
        elapsed = time.perf_counter() - start
        steps = engine._control(GetStepTimes()).result
        engine.check_no_leaks()
    out_tokens = sum(r["meta_info"]["completion_tokens"] for r in results)
    decode = [s for s in steps if s["mode"] == "decode"]
    at32 = [s for s in decode if s["batch_size"] >= 32]
    buckets = {f"{max(lo, 1)}-{lo + 7}": [s for s in decode if lo <= s["batch_size"] <= lo + 7]
               for lo in range(0, 64, 8)}

    def overhead_ms(rows):
        return round(1000 * statistics.mean(s["wall"] - s["forward"] for s in rows), 3) if rows else None

    # the engine loop between two decode steps (inbox poll, outbox put): not part of a step
    gaps = [b["start"] - a["start"] - a["wall"] for a, b in zip(steps, steps[1:])
            if a["mode"] == b["mode"] == "decode"]

    return {
        "elapsed_s": round(elapsed, 2), "output_tokens": out_tokens,
        "output_tokens_per_s": round(out_tokens / elapsed, 2),
        "decode_steps": len(decode), "extend_steps": len(steps) - len(decode),
        "sched_overhead_ms_per_decode_step": overhead_ms(decode),
        "sched_overhead_ms_per_decode_step_batch_ge_32": overhead_ms(at32),
        "num_decode_steps_batch_ge_32": len(at32),
        "sched_overhead_ms_by_batch_size": {k: {"steps": len(v), "overhead_ms": overhead_ms(v)}
                                            for k, v in buckets.items() if v},
        # a step that finishes requests also frees their KV and reports them
        "sched_overhead_ms_steps_finishing_requests": overhead_ms([s for s in decode if s["finished"]]),
        "sched_overhead_ms_steps_finishing_none": overhead_ms([s for s in decode if not s["finished"]]),
        "loop_ms_between_decode_steps": round(1000 * statistics.mean(gaps), 3) if gaps else None,
        # every decode step: [batch size, overhead ms, requests it finished]
        "decode_steps_raw": [[s["batch_size"], round(1000 * (s["wall"] - s["forward"]), 3), s["finished"]]
                             for s in decode],
    }


def run_hf(model_path: str, dtype: str, workload, batch_size: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
    pad = 151643

    def generate(batch):
        width = max(len(p) for p, _ in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in batch])
        new = max(o for _, o in batch)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=pad)

    generate([([1, 2, 3], 4)])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(workload), batch_size):
        generate(workload[i:i + batch_size])
    elapsed = time.perf_counter() - start
    out_tokens = sum(o for _, o in workload)
    return {"elapsed_s": round(elapsed, 2), "output_tokens": out_tokens,
            "output_tokens_per_s": round(out_tokens / elapsed, 2), "batch_size": batch_size}


def run(args: argparse.Namespace) -> None:
    import torch

    from runtime.demo.checkpoint import demo_model_path

    workload = make_workload(args.num_requests, tuple(args.prompt_len), tuple(args.output_len), args.seed)
    from runtime.bench import results

    report = {**results.header("offline", args, "transformers"),
              "workload": {"num_requests": args.num_requests, "prompt_len": args.prompt_len,
                           "output_len": args.output_len, "prompt_tokens": sum(len(p) for p, _ in workload),
                           "output_tokens": sum(o for _, o in workload)},
              "torch_threads": torch.get_num_threads(), "results": {}}
    for dtype in args.dtypes.split(","):
        path = args.model_path or str(demo_model_path("qwen2", "small", dtype))
        row = {"model": path, "ours": run_ours(path, dtype, workload, args.max_running_requests)}
        summary = {k: v for k, v in row["ours"].items() if k != "decode_steps_raw"}
        print(f"[{dtype}] radixflow: {summary}", flush=True)
        if not args.skip_hf:
            row["transformers"] = run_hf(path, dtype, workload, args.hf_batch_size)
            row["ratio"] = round(row["ours"]["output_tokens_per_s"] / row["transformers"]["output_tokens_per_s"], 2)
            print(f"[{dtype}] transformers: {row['transformers']}  ratio: {row['ratio']}", flush=True)
        report["results"][dtype] = row
    for path in results.write(args.out, report, markdown(report)):
        print(f"wrote {path}")


def markdown(report: dict) -> str:
    w = report["workload"]
    lines = [f"{w['num_requests']} requests, prompts {w['prompt_len'][0]}-{w['prompt_len'][1]} tokens, outputs "
             f"{w['output_len'][0]}-{w['output_len'][1]} tokens (EOS ignored), greedy.", "",
             "| dtype | radixflow out tok/s | transformers generate out tok/s | ratio |", "|---|---|---|---|"]
    for dtype, row in report["results"].items():
        hf = row.get("transformers", {}).get("output_tokens_per_s", "-")
        lines.append(f"| {dtype} | {row['ours']['output_tokens_per_s']} | {hf} | {row.get('ratio', '-')} |")
    return "\n".join(lines)
