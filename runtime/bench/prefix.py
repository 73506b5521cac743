"""`radixflow bench prefix`: prefix-sharing workloads with the radix cache on and off.

Workloads (token ids drawn at random; outputs generated greedily, EOS ignored):
  few-shot    one shared prefix, many short questions behind it
  multi-turn  conversations whose replies are fed back into the next turn
  tree        tree-of-thought: a root prompt, a fan-out of branches, each fanned out again
  no-share    unrelated prompts (the cache can only cost here)

The optimal hit rate replays the workload's token streams: a request can at best
reuse its longest common prefix with anything computed before it (earlier
requests' prompt + output, or the prompts of requests in the same round), never
its own last prompt token (its logits are needed).
"""

from __future__ import annotations

import argparse
import random
import time

from runtime.engine.scheduler import common_prefix_len

VOCAB = 151_643
DEFAULT_OUT = "docs/bench/prefix.json"


def add_parser(sub) -> None:
    p = sub.add_parser("prefix", help="radix cache on vs off on prefix-sharing workloads")
    p.add_argument("--model-path", default=None, help="default: the 'small' demo model")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--workloads", default="few-shot,multi-turn,tree,no-share")
    p.add_argument("--scale", type=float, default=1.0, help="shrink request counts/lengths (quick runs)")
    p.add_argument("--max-running-requests", type=int, default=64)
    p.add_argument("--repeats", type=int, default=None,
                   help="on/off runs per workload, alternated, medians reported (default: 3 for "
                        "no-share, whose on/off gap is small next to machine noise; 1 otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.set_defaults(func=run)


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(max(1, n))]


class Workload:
    """Rounds of requests; a round's prompts may depend on earlier rounds' outputs."""

    def __init__(self, name: str, scale: float, seed: int) -> None:
        self.name, self.scale, self.rng = name, scale, random.Random(seed)

    def s(self, n: int) -> int:
        return max(1, int(n * self.scale))

    def rounds(self):
        """Yields lists of (prompt ids, max_new_tokens); receives the outputs of each round."""
        rng, s = self.rng, self.s
        if self.name == "few-shot":
            prefix = _tokens(rng, s(1500))
            yield [(prefix + _tokens(rng, rng.randint(20, 60)), 16) for _ in range(s(64))]
        elif self.name == "multi-turn":
            convs = [_tokens(rng, rng.randint(100, 200)) for _ in range(s(16))]
            for _ in range(5):
                prompts = [c + _tokens(rng, rng.randint(30, 60)) for c in convs]
                outputs = yield [(p, 32) for p in prompts]
                convs = [p + o for p, o in zip(prompts, outputs)]
        elif self.name == "tree":
            roots = [_tokens(rng, 400) for _ in range(s(4))]
            outputs = yield [(r + _tokens(rng, 20), 32) for r in roots for _ in range(4)]
            level1 = [(r, o) for r, o in zip([r for r in roots for _ in range(4)], outputs)]
            yield [(r + o + _tokens(rng, 20), 32) for r, o in level1 for _ in range(4)]
        elif self.name == "no-share":
            yield [(_tokens(rng, rng.randint(200, 600)), 32) for _ in range(s(64))]
        else:
            raise ValueError(f"unknown workload {self.name!r}")


def optimal_cached(history: list[list[int]], round_prompts: list[list[int]]) -> int:
    """Best possible cached prompt tokens for one round, given everything computed before."""
    total = 0
    seen = list(history)
    for prompt in round_prompts:
        best = max((common_prefix_len(prompt, h) for h in seen), default=0)
        total += min(best, len(prompt) - 1)
        seen.append(prompt)
    return total


def run_workload(engine, name: str, scale: float, seed: int) -> dict:
    gen = Workload(name, scale, seed).rounds()
    batch = next(gen)
    history: list[list[int]] = []
    prompt_tokens = cached = optimal = out_tokens = 0
    elapsed = 0.0
    while True:
        prompts = [p for p, _ in batch]
        optimal += optimal_cached(history, prompts)
        start = time.perf_counter()
        results = engine.generate(input_ids=prompts, sampling_params=[
            {"max_new_tokens": n, "ignore_eos": True, "temperature": 0} for _, n in batch])
        elapsed += time.perf_counter() - start
        outputs = [r["output_ids"] for r in results]
        prompt_tokens += sum(len(p) for p in prompts)
        cached += sum(r["meta_info"]["cached_tokens"] for r in results)
        out_tokens += sum(len(o) for o in outputs)
        history += [p + o for p, o in zip(prompts, outputs)]
        try:
            batch = gen.send(outputs)
        except StopIteration:
            break
    return {"elapsed_s": round(elapsed, 2), "prompt_tokens": prompt_tokens, "output_tokens": out_tokens,
            "tokens_per_s": round((prompt_tokens + out_tokens) / elapsed, 1),
            "hit_rate": round(cached / prompt_tokens, 4), "optimal_hit_rate": round(optimal / prompt_tokens, 4)}


def run(args: argparse.Namespace) -> None:
    from runtime.bench.alternating import run_alternating
    from runtime.demo.checkpoint import demo_model_path
    from runtime.engine.api import Engine

    path = args.model_path or str(demo_model_path("qwen2", "small", args.dtype))
    from runtime.bench import results

    report = {**results.header("prefix", args), "model": path, "dtype": args.dtype, "scale": args.scale,
              "workloads": {}}
    for name in args.workloads.split(","):
        repeats = args.repeats or (3 if name == "no-share" else 1)
        with Engine(path, dtype=args.dtype, max_total_tokens=65536,
                    max_running_requests=args.max_running_requests) as on_engine, \
                Engine(path, dtype=args.dtype, disable_radix_cache=True, max_total_tokens=65536,
                       max_running_requests=args.max_running_requests) as off_engine:
            for engine in (on_engine, off_engine):
                engine.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 2})  # warm-up

            def side(engine):
                def once() -> dict:
                    engine.flush_cache()
                    row = run_workload(engine, name, args.scale, args.seed)
                    engine.check_no_leaks()
                    return row
                return once

            row = run_alternating({"cache_on": side(on_engine), "cache_off": side(off_engine)}, repeats)
        on, off = row["cache_on"], row["cache_off"]
        for side in (on, off):
            side["tokens_per_s"] = round((side["prompt_tokens"] + side["output_tokens"]) / side["elapsed_s"], 1)
        row["speedup"] = round(off["elapsed_s"] / on["elapsed_s"], 3)
        row["hit_rate_vs_optimal"] = round(on["hit_rate"] / on["optimal_hit_rate"], 3) \
            if on["optimal_hit_rate"] else None
        print(f"[{name}] on: {on}\n[{name}] off: {off}\n[{name}] speedup {row['speedup']}x, "
              f"hit rate {on['hit_rate']:.1%} of optimal {on['optimal_hit_rate']:.1%}", flush=True)
        report["workloads"][name] = row
    for path in results.write(args.out, report, markdown(report)):
        print(f"wrote {path}")


def markdown(report: dict) -> str:
    lines = [f"Model `{report['model']}` ({report['dtype']}); radix cache on vs off, one engine each, "
             "alternating; medians.", "",
             "| workload | cache on | cache off | speed-up | hit rate (of optimal) |", "|---|---|---|---|---|"]
    for name, row in report["workloads"].items():
        on, off = row["cache_on"], row["cache_off"]
        lines.append(f"| {name} | {on['elapsed_s']} s ({on['tokens_per_s']} tok/s) | {off['elapsed_s']} s "
                     f"({off['tokens_per_s']} tok/s) | **{row['speedup']}x** | {on['hit_rate']:.1%} "
                     f"({on['optimal_hit_rate']:.1%}) |")
    return "\n".join(lines)
