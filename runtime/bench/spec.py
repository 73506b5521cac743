"""`radixflow bench spec`: draft-free speculative decoding on copy-heavy workloads.

Every configuration (drafts off, and each algorithm) gets its own engine on the same
model; all stay up and take turns per (workload, batch size), in alternating order
(runtime/bench/alternating.py). Greedy decoding, so every configuration must produce the
off engine's tokens: the table says how many outputs are identical. Batch size b means b
conversations decoded together (b requests in flight); a run decodes max(b,
--min-requests) conversations. The cache (and with it the suffix index) is flushed before
every run, so no run learns from an earlier run of the same prompts.
"""

from __future__ import annotations

import argparse
import random
import time

from runtime.bench.spec_workloads import WORKLOADS, Conversation

DEFAULT_OUT = "docs/bench/spec.json"
CONFIGS = {  # label -> engine options; "off" drafts nothing (jump-forward included)
    "off": {"speculative_algorithm": "none", "disable_jump_forward": True},
    "ngram": {"speculative_algorithm": "ngram", "disable_jump_forward": True},
    "suffix": {"speculative_algorithm": "suffix", "disable_jump_forward": True},
    "grammar": {"speculative_algorithm": "grammar"},
    "auto": {"speculative_algorithm": "auto"},
}
FLOORS = {"json-extraction": 1.8, "code-edit": 1.8}  # speed-up at batch 1 (best algorithm)
CONTROL, CONTROL_FLOOR = "free-chat", 0.95  # every algorithm, every batch size
STAT_KEYS = ("decode_steps", "verify_steps", "drafted_requests", "draft_tokens", "accepted_draft_tokens")


def add_parser(sub) -> None:
    p = sub.add_parser("spec", help="speculative decoding (ngram / suffix / grammar drafts) vs off")
    p.add_argument("--model-path", default=None, help="default: the default model (SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--algorithms", default="ngram,suffix,grammar,auto")
    p.add_argument("--batch-sizes", default="1,4,16")
    p.add_argument("--min-requests", type=int, default=4, help="conversations per run at least")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--num-draft-tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.set_defaults(func=run)


def run_conversations(engine, convs: list[Conversation], batch_size: int, max_new_tokens: int) -> dict:
    """Decode the conversations batch_size at a time (each step of a tool loop is one
    request per conversation); returns elapsed_s, output tokens and every answer's ids."""
    tok = engine.tokenizer
    outputs, num_tokens = [], 0
    start = time.perf_counter()
    for first in range(0, len(convs), batch_size):
        active, step = convs[first:first + batch_size], 0
        while active:
            prompts = [tok.apply_chat_template(c.messages, add_generation_prompt=True, tokenize=False) for c in active]
            params = [{"max_new_tokens": max_new_tokens, "temperature": 0.0, **c.params} for c in active]
            results = engine.generate(prompts, params)
            still = []
            for conv, res in zip(active, results):
                outputs.append(res["output_ids"])
                num_tokens += len(res["output_ids"])
                follow = conv.follow_up(conv.messages, res["text"], step) if conv.follow_up else None
                if follow is not None and step + 1 < conv.steps:
                    conv.messages = conv.messages + [{"role": "assistant", "content": res["text"]},
                                                     {"role": "user", "content": follow}]
                    still.append(conv)
            active, step = still, step + 1
    return {"elapsed_s": time.perf_counter() - start, "output_tokens": num_tokens, "outputs": outputs}


def measure(engine, workload: str, batch_size: int, args) -> dict:
    engine.flush_cache()
    before = engine.get_server_info()
    n = max(batch_size, args.min_requests)
    convs = [WORKLOADS[workload](random.Random(args.seed * 100_003 + i), i) for i in range(n)]
    row = run_conversations(engine, convs, batch_size, args.max_new_tokens)
    after = engine.get_server_info()
    row.update({k: after[k] - before[k] for k in STAT_KEYS})
    engine.check_no_leaks()
    return row


def summarize(row: dict, off: dict) -> dict:
    out = {"elapsed_s": round(row["elapsed_s"], 3), "elapsed_s_runs": [round(t, 3) for t in row["elapsed_s_runs"]],
           "output_tokens": row["output_tokens"], "tokens_per_s": round(row["output_tokens"] / row["elapsed_s"], 1),
           **{k: row[k] for k in STAT_KEYS}}
    out["speedup"] = round(off["elapsed_s"] / row["elapsed_s"], 3)
    out["acceptance"] = round(row["accepted_draft_tokens"] / row["draft_tokens"], 3) if row["draft_tokens"] else None
    # tokens a request emits in a step where it had a draft (1 = nothing accepted)
    out["mean_accepted_len"] = round(1 + row["accepted_draft_tokens"] / row["drafted_requests"], 2) \
        if row["drafted_requests"] else None
    out["identical"] = sum(a == b for a, b in zip(row["outputs"], off["outputs"]))
    out["of"] = len(off["outputs"])
    return out


def run(args: argparse.Namespace) -> None:
    from runtime.bench import results
    from runtime.bench.alternating import run_alternating
    from runtime.engine.api import Engine

    labels = ["off", *args.algorithms.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    engines = {label: Engine(args.model_path, dtype=args.dtype, max_total_tokens=65_536,
                             max_running_requests=max(batch_sizes),
                             speculative_num_draft_tokens=args.num_draft_tokens, **CONFIGS[label])
               for label in labels}
    try:
        for engine in engines.values():  # warm-up: memory, the grammar compiler, the tokenizer
            engine.generate("Hi", {"max_new_tokens": 4, "json_schema": '{"type": "integer"}'})
        model = engines["off"].model_path
        report = {**results.header("spec", args), "model": model, "dtype": args.dtype,
                  "num_draft_tokens": args.num_draft_tokens, "workloads": {}}
        for workload in args.workloads.split(","):
            report["workloads"][workload] = {}
            for b in batch_sizes:
                sides = {label: (lambda e=engines[label]: measure(e, workload, b, args)) for label in labels}
                rows = run_alternating(sides, args.repeats)
                cell = {label: summarize(rows[label], rows["off"]) for label in labels}
                report["workloads"][workload][str(b)] = cell
                print(f"[{workload} batch {b}] " + ", ".join(
                    f"{label} {c['tokens_per_s']} tok/s {c['speedup']}x ({c['identical']}/{c['of']} same)"
                    for label, c in cell.items()), flush=True)
    finally:
        for engine in engines.values():
            engine.shutdown()
    report["floors"] = floors(report)
    for path in results.write(args.out, report, markdown(report)):
        print(f"wrote {path}")


def floors(report: dict) -> list[dict]:
    """The issue's floors, each with what was reached and whether outputs were identical."""
    out = []
    for workload, floor in FLOORS.items():
        cell = report["workloads"].get(workload, {}).get("1")
        if cell:
            best = max((c for label, c in cell.items() if label != "off"), key=lambda c: c["speedup"])
            label = next(k for k, c in cell.items() if c is best)
            met = best["speedup"] >= floor and best["identical"] == best["of"]
            out.append({"what": f"{workload}, batch 1, best algorithm ({label})", "floor": floor,
                        "reached": best["speedup"], "met": met})
    for b, cell in report["workloads"].get(CONTROL, {}).items():
        worst = min(c["speedup"] for label, c in cell.items() if label != "off")
        out.append({"what": f"{CONTROL} (no copying), batch {b}, worst algorithm", "floor": CONTROL_FLOOR,
                    "reached": worst, "met": worst >= CONTROL_FLOOR})
    return out


def markdown(report: dict) -> str:
    labels = list(next(iter(next(iter(report["workloads"].values())).values())))
    lines = [f"Model `{report['model']}` ({report['dtype']}), greedy, at most {report['num_draft_tokens']} draft "
             "tokens; one engine per configuration, alternating; medians. Each cell: output tokens/s, speed-up "
             "vs off, mean tokens emitted per drafted step, outputs identical to off.", "",
             "| workload | batch | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for workload, cells in report["workloads"].items():
        for b, cell in cells.items():
            parts = []
            for label in labels:
                c = cell[label]
                if label == "off":
                    parts.append(f"{c['tokens_per_s']} tok/s")
                    continue
                accepted = f", {c['mean_accepted_len']} tok/step" if c["mean_accepted_len"] else ""
                parts.append(f"{c['tokens_per_s']} (**{c['speedup']}x**{accepted}, {c['identical']}/{c['of']})")
            lines.append(f"| {workload} | {b} | " + " | ".join(parts) + " |")
    from runtime.bench.results import floors_markdown

    return "\n".join(lines + floors_markdown(report["floors"], "x"))
