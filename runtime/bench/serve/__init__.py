"""`radixflow bench serve`: an agentic load generator for any OpenAI-compatible server.

Sessions (workloads.py) start by Poisson arrivals at `--request-rate` (default: all at
once) with at most `--max-concurrency` sessions in flight (a comma list sweeps several);
each session's turns run back to back, replies fed into the history. Every request
streams (client.py); metrics.py turns the records into TTFT/TPOT/ITL/E2E statistics and
throughputs. Writes one JSON results file, a markdown table and PNG plots (report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time

import httpx

from runtime.bench.serve.client import BACKENDS, UnsupportedWorkload, check_supported, run_session
from runtime.bench.serve.metrics import RequestRecord, summarize
from runtime.bench.serve.workloads import WORKLOADS, Shape, build

DEFAULT_OUT = "docs/bench/serve.json"


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="agentic load generator against an OpenAI-compatible server")
    add_load_args(p)
    p.add_argument("--base-url", default=None, help="the server (default: http://127.0.0.1:30000, or --launch)")
    p.add_argument("--model", default=None, help="model name to send (default: the server's first /v1/models)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--label", default=None, help="the server's name in tables (default: radixflow or the URL)")
    p.add_argument("--launch", action="store_true",
                   help="start `radixflow serve` on a free port (--model-path, --server-args), stop it after")
    p.add_argument("--model-path", default=None, help="with --launch: the checkpoint (default: the default model)")
    p.add_argument("--server-args", default="", help="with --launch: extra `radixflow serve` flags, one string")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=FLAGS",
                   help="with --launch, repeatable: one server per variant (its label, then `radixflow serve` "
                        "flags added to --server-args), each run in turn, --repeats times in alternating order; "
                        "e.g. '2 replicas, prefix=--replicas 2'")
    p.add_argument("--repeats", type=int, default=1, help="with --variant: rounds over the variants")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.set_defaults(func=run)


def add_load_args(p: argparse.ArgumentParser) -> None:
    """The workload and load flags (shared with `bench compare`)."""
    p.add_argument("--backend", default="openai-chat", choices=BACKENDS)
    p.add_argument("--workloads", default="shared-prefix", help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--num-prompts", type=int, default=None, help="sessions per workload (default: per workload)")
    p.add_argument("--request-rate", type=float, default=math.inf, help="sessions/s, Poisson arrivals (inf: at once)")
    p.add_argument("--max-concurrency", default="16", help="sessions in flight; a comma list sweeps (0: unlimited)")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests before each run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sessions, for a smoke run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-ignore-eos", action="store_true",
                   help="never send the ignore_eos extra (servers that refuse it): outputs end at EOS")
    p.add_argument("--eos-logit-bias", default=None, metavar="IDS",
                   help="ignore EOS by banning these token ids through logit_bias (servers without ignore_eos)")


def shape_of(args: argparse.Namespace) -> Shape:
    shape = Shape().quick() if args.quick else Shape()
    if args.num_prompts:
        shape = Shape(**{**shape.__dict__, "num_sessions": args.num_prompts})
    return shape


def concurrencies(args: argparse.Namespace) -> list[int]:
    return [int(c) for c in str(args.max_concurrency).split(",") if c.strip()]


async def run_load(base_url: str, backend: str, model: str, workload: str, shape: Shape, seed: int,
                   max_concurrency: int, request_rate: float, warmup: int, api_key: str | None = None,
                   progress: bool = True, ignore_eos: bool = True, eos_bias: tuple[int, ...] = ()) -> dict:
    """One timed run: every session of the workload; returns {"summary", "records"}."""
    check_supported(backend, workload)
    sessions = build(workload, shape, seed)  # callers vary the seed per run: no run meets another's prompts
    for session in sessions:
        session.ignore_eos, session.eos_bias = session.ignore_eos and ignore_eos, eos_bias
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=httpx.Timeout(600.0),
                                 limits=limits) as client:
        for k in range(warmup):  # the first turn of a session from other seeds: untimed
            warm = build(workload, shape, -1 - seed * 100 - k)[0]
            warm.turns, warm.ignore_eos, warm.eos_bias = warm.turns[:1], warm.ignore_eos and ignore_eos, eos_bias
            await run_session(client, backend, model, warm, [])
        records: list[RequestRecord] = []
        bar = _progress(sum(len(s.turns) for s in sessions), f"{workload} c={max_concurrency}", progress)
        gate = asyncio.Semaphore(max_concurrency or len(sessions))
        rng = random.Random(seed)

        async def one(session, delay: float) -> None:
            await asyncio.sleep(delay)
            async with gate:
                await run_session(client, backend, model, session, records, on_request=bar.update)

        delays, t = [], 0.0
        for _ in sessions:
            delays.append(t)
            if math.isfinite(request_rate):
                t += rng.expovariate(request_rate)
        start = time.perf_counter()
        await asyncio.gather(*(one(s, d) for s, d in zip(sessions, delays)))
        duration = time.perf_counter() - start
        bar.close()
    return {"summary": summarize(records, duration), "records": records}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", disable=not enabled, leave=False)


def server_model(base_url: str, api_key: str | None) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    data = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=30).json()
    return data["data"][0]["id"]


def run_workloads(args: argparse.Namespace, base_url: str, label: str, model: str | None = None) -> list[dict]:
    """Every workload x concurrency of `args` against one server: result rows."""
    model = model or args.model or server_model(base_url, args.api_key)
    rows = []
    for workload in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        for k, concurrency in enumerate(concurrencies(args)):
            row = {"server": label, "model": model, "backend": args.backend, "workload": workload,
                   "max_concurrency": concurrency, "request_rate": args.request_rate,
                   "ignore_eos": ("logit_bias" if eos_bias_of(args) else "extra") if not args.no_ignore_eos else "off"}
            try:
                result = asyncio.run(run_load(
                    base_url, args.backend, model, workload, shape_of(args), args.seed * 100 + k, concurrency,
                    args.request_rate, args.warmup, args.api_key, progress=not args.no_progress,
                    ignore_eos=not args.no_ignore_eos, eos_bias=eos_bias_of(args)))
            except UnsupportedWorkload as e:
                rows.append({**row, "unsupported": str(e)})
                continue
            rows.append({**row, "summary": result["summary"],
                         "e2e_s": sorted(r.e2e for r in result["records"] if r.ok),
                         "ttft_s": sorted(r.ttft for r in result["records"] if r.ok and r.ttft is not None)})
            print(_line(rows[-1]))
    return rows


def eos_bias_of(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(int(t) for t in (getattr(args, "eos_logit_bias", None) or "").split(",") if t.strip())


def _line(row: dict) -> str:
    s = row["summary"]
    return (f"{row['server']} {row['workload']} c={row['max_concurrency']}: {s['successes']}/{s['requests']} ok, "
            f"{s['output_token_throughput']:.1f} out tok/s, TTFT median {s['ttft_s']['median'] * 1e3:.0f} ms, "
            f"E2E median {s['e2e_s']['median']:.2f} s"
            + (f", cache hit {s['cache_hit_rate']:.0%}" if s["cache_hit_rate"] is not None else "")
            + (f", valid {s['valid_rate']:.0%}" if s["valid_rate"] is not None else "")
            + (f", {s['tool_calls']} tool calls" if s["tool_calls"] else "")
            + (f", {s['truncated']} cut off by max_tokens" if s["truncated"] else "")
            + (f"; first error: {s['first_error']}" if s["first_error"] else ""))


def run(args: argparse.Namespace) -> None:
    from runtime.bench import results
    from runtime.bench.serve.report import serve_markdown, write_plots

    if args.variant:
        rows = run_variants(args)
        base_url = None
    else:
        server = None
        if args.launch:
            import shlex

            from runtime.bench.servers import start_radixflow

            server = start_radixflow(args.model_path, shlex.split(args.server_args))
        base_url = server.url if server else (args.base_url or "http://127.0.0.1:30000")
        label = args.label or ("radixflow" if server else base_url)
        try:
            rows = run_workloads(args, base_url, label)
        finally:
            if server is not None:
                server.stop()
    report = {**results.header("serve", args, "vllm", "llama_cpp_python", "openai"), "base_url": base_url,
              "rows": rows}
    plots = write_plots(args.out, rows)
    report["plots"] = [str(p) for p in plots]
    for path in results.write(args.out, report, serve_markdown(rows, plots)):
        print(f"wrote {path}")


def run_variants(args: argparse.Namespace) -> list[dict]:
    """--variant LABEL=FLAGS: a launched server per variant, in turn; round r runs them in
    reverse order when r is odd (machine drift hits each alike). Rows carry "round"."""
    import shlex

    from runtime.bench.servers import start_radixflow

    if not args.launch:
        raise SystemExit("radixflow bench serve: --variant launches its servers: add --launch")
    variants = []
    for spec in args.variant:
        label, sep, flags = spec.partition("=")
        if not sep or not label.strip():
            raise SystemExit(f"radixflow bench serve: --variant takes LABEL=FLAGS, got {spec!r}")
        variants.append((label.strip(), shlex.split(args.server_args) + shlex.split(flags)))
    rows = []
    for r in range(args.repeats):
        for label, flags in variants if r % 2 == 0 else variants[::-1]:
            server = start_radixflow(args.model_path, flags)
            try:
                rows += [{**row, "round": r, "server_args": flags} for row in run_workloads(args, server.url, label)]
            finally:
                server.stop()
    return rows
