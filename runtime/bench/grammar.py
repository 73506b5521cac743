"""`radixflow bench grammar`: grammar backends on maskbench-dev JSON schemas.

For each backend and each subset of ../shared/data/maskbench-dev (Github_easy,
Glaiveai2K, Kubernetes, ...), with the demo model's Qwen2.5 tokenizer (V = 151,936):
  * schemas compiled (strict, compact whitespace), and why the others were refused
    (unsupported keyword, invalid schema, other error, compile timeout);
  * compile ms (median, p99) over compiled schemas;
  * per-token mask fill µs (median, p99): `fill_bitmask` timed before each token of the
    schema's first valid test instance (a 30-step random walk when there is none);
  * the `tests` instances: json.dumps(compact, ensure_ascii=False) -> tokenize -> feed
    token by token; a valid instance counts as accepted when every token is accepted
    (and as terminated when EOS is then accepted), an invalid one as rejected when any
    token or the final EOS is refused.
Each backend runs in a child process. outlines stops a compile itself at --timeout
(it indexes in a process it can kill; some schemas would take minutes); a child still
busy with one schema KILL_GRACE_S after --timeout is killed and restarted. Either
counts as a timeout. Backends run one after the other so their timings do not compete.
Writes docs/bench/grammar.json and .md (after each subset, so a long run keeps its part).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import statistics
import time
from pathlib import Path

from runtime.bench.results import header
from runtime.bench.results import write as write_results

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = "docs/bench/grammar.json"
V_DEMO = 151_936


def add_parser(sub) -> None:
    p = sub.add_parser("grammar", help="grammar backends on maskbench-dev JSON schemas")
    p.add_argument("--backends", default="xgrammar,llguidance,outlines",
                   help="outlines may index one schema for minutes: pair it with --limit")
    p.add_argument("--limit", type=int, default=None, help="schemas per subset (seeded sample)")
    p.add_argument("--subsets", default=None, help="comma-separated subset names (default: all)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per schema before it counts as a timeout")
    p.add_argument("--data-dir", default=None, help="maskbench-dev folder (default: $RADIXFLOW_SHARED_DATA/"
                   "maskbench-dev or ../shared/data/maskbench-dev next to the repo)")
    p.add_argument("--model-path", default=None, help="tokenizer source (default: the demo model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--decode", action="store_true",
                   help="also measure constrained vs unconstrained decode and jump-forward (small model, "
                        "batch 16); written to docs/bench/grammar-decode.json")
    p.add_argument("--dtype", default="bfloat16",
                   help="model dtype for --decode (small model) and --generate (tiny model)")
    p.add_argument("--generate", action="store_true",
                   help="also send every schema through the engine (tiny model, greedy + sampled) and "
                        "validate what stops; written next to --out as <stem>-generate.json and .md")
    p.add_argument("--generate-max-new-tokens", type=int, default=256)
    p.add_argument("--skip-masks", action="store_true", help="skip the compile/mask/instance tables")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------- data
def data_dir(arg: str | None) -> Path | None:
    candidates = [Path(arg)] if arg else []
    if os.environ.get("RADIXFLOW_SHARED_DATA"):
        candidates.append(Path(os.environ["RADIXFLOW_SHARED_DATA"]) / "maskbench-dev")
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "maskbench-dev")
    return next((c for c in candidates if c.is_dir()), None)


def subset_of(file_name: str) -> str:
    """Github_easy---o10088.json -> Github_easy; BFCL_simple_12.json -> BFCL_simple."""
    if "---" in file_name:
        return file_name.split("---")[0]
    return re.sub(r"_\d+\.json$", "", file_name)


def select_files(folder: Path, subsets: list[str] | None, limit: int | None, seed: int) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.json")):
        groups.setdefault(subset_of(path.name), []).append(path)
    if subsets:
        groups = {k: v for k, v in groups.items() if k in subsets}
    if limit is not None:
        rng = random.Random(seed)
        groups = {k: sorted(rng.sample(v, min(limit, len(v)))) for k, v in groups.items()}
    return dict(sorted(groups.items()))


# ---------------------------------------------------------------------------- child process
def _load_tokenizer(model_path: str | None):
    from transformers import AutoTokenizer

    if model_path is None:
        from runtime.demo.checkpoint import demo_model_path

        model_path = demo_model_path("qwen2", "tiny", "float32")
    return AutoTokenizer.from_pretrained(str(model_path))


def _measure(backend, tokenizer, schema, tests: list[dict], seed: int) -> dict:
    from runtime.constrained import (
        CompileTimeoutError,
        GrammarError,
        GrammarSpec,
        InvalidSchemaError,
        UnsupportedSchemaError,
        allocate_bitmask,
    )

    out: dict = {}
    t0 = time.perf_counter()
    try:
        compiled = backend.compile(GrammarSpec.from_json_schema(schema))
    except GrammarError as e:
        out["status"] = ("unsupported" if isinstance(e, UnsupportedSchemaError) else
                         "invalid" if isinstance(e, InvalidSchemaError) else
                         "timeout" if isinstance(e, CompileTimeoutError) else "error")
        out["error"] = str(e)[:300]
        return out
    out["status"], out["compile_ms"] = "ok", (time.perf_counter() - t0) * 1e3
    eos = backend.vocab.eos_ids[0]
    bitmask = allocate_bitmask(1, backend.vocab_size)
    dumps = lambda x: json.dumps(x, separators=(",", ":"), ensure_ascii=False)  # noqa: E731
    valid = [t for t in tests if t.get("valid")]
    fills: list[float] = []
    if valid:  # time the mask before each token of the first valid instance
        m = backend.new_matcher(compiled)
        for tok in tokenizer.encode(dumps(valid[0]["data"])):
            t1 = time.perf_counter()
            m.fill_bitmask(bitmask, 0)
            fills.append((time.perf_counter() - t1) * 1e6)
            if not m.accept_token(tok):
                break
    else:
        from runtime.constrained.testing import random_walk

        class Timed:  # times fill_bitmask inside a short random walk
            def __init__(self, inner):
                self.inner = inner

            def fill_bitmask(self, b, row):
                t1 = time.perf_counter()
                self.inner.fill_bitmask(b, row)
                fills.append((time.perf_counter() - t1) * 1e6)

            def __getattr__(self, name):
                return getattr(self.inner, name)

        random_walk(Timed(backend.new_matcher(compiled)), backend.vocab, random.Random(seed), max_steps=30)
    out["fill_us"] = fills
    checks = []
    for t in tests:
        m = backend.new_matcher(compiled)
        accepted = all(m.accept_token(tok) for tok in tokenizer.encode(dumps(t["data"])))
        terminated = accepted and m.accept_token(eos) and m.is_terminated()
        checks.append((bool(t.get("valid")), accepted, terminated))
    out["tests"] = checks
    return out


def _child(backend_name: str, model_path: str | None, conn) -> None:
    from runtime.constrained import get_backend

    tokenizer = _load_tokenizer(model_path)
    backend = get_backend(backend_name, tokenizer, V_DEMO, [151645, 151643])
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        path, seed, backend.compile_timeout_s = job
        doc = json.loads(Path(path).read_text())
        try:
            conn.send(_measure(backend, tokenizer, doc["schema"], doc.get("tests", []), seed))
        except Exception as e:  # a crash in one schema must not end the run
            conn.send({"status": "error", "error": f"{type(e).__name__}: {e}"[:300]})


KILL_GRACE_S = 5.0  # a backend that stops its own compile at the timeout gets to report it


class Worker:
    """One backend in a child process; restarted when it overruns a schema's timeout."""

    def __init__(self, backend: str, model_path: str | None) -> None:
        self.backend, self.model_path, self.proc = backend, model_path, None

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(self.backend, self.model_path, child_conn), daemon=True)
        self.proc.start()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError(f"the {self.backend} worker did not start")

    def measure(self, path: Path, seed: int, timeout: float) -> dict:
        if self.proc is None:
            self.start()
        self.conn.send((str(path), seed, timeout))
        if self.conn.poll(timeout + KILL_GRACE_S):
            return self.conn.recv()
        self.stop(kill=True)
        return {"status": "timeout"}

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.conn.send(None)
        self.proc.join(10)
        self.proc = None


# ---------------------------------------------------------------------------- report
def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(results: list[dict]) -> dict:
    ok = [r for r in results if r["status"] == "ok"]
    compile_ms = [r["compile_ms"] for r in ok]
    fills = [f for r in ok for f in r.get("fill_us", [])]
    tests = [c for r in ok for c in r.get("tests", [])]
    valid = [c for c in tests if c[0]]
    invalid = [c for c in tests if not c[0]]
    count = lambda s: sum(r["status"] == s for r in results)  # noqa: E731
    return {
        "schemas": len(results), "compiled": len(ok), "unsupported": count("unsupported"),
        "invalid": count("invalid"), "error": count("error"), "timeout": count("timeout"),
        "compile_ms_median": statistics.median(compile_ms) if compile_ms else None,
        "compile_ms_p99": _pct(compile_ms, 0.99),
        "mask_us_median": statistics.median(fills) if fills else None, "mask_us_p99": _pct(fills, 0.99),
        "valid_accepted": sum(c[1] for c in valid), "valid_terminated": sum(c[2] for c in valid),
        "valid_total": len(valid),
        "invalid_rejected": sum(not c[2] for c in invalid), "invalid_total": len(invalid),
    }


def _fmt(x, digits=1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(report: dict) -> str:
    lines = [f"# bench grammar\n\n`{report['command']}`\n\nmaskbench-dev, strict schemas, compact "
             f"whitespace, tokenizer: Qwen2.5 (V={V_DEMO}); {report['machine']}.\n",
             "| backend | subset | compiled / schemas | unsupp. | invalid | error | timeout | compile ms "
             "med / p99 | mask µs med / p99 | valid accepted (terminated) | invalid rejected |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for backend, subsets in report["results"].items():
        for subset, s in sorted(subsets.items(), key=lambda item: item[0] == "ALL"):  # ALL last
            lines.append(
                f"| {backend} | {subset} | {s['compiled']}/{s['schemas']} | {s['unsupported']} | {s['invalid']} | "
                f"{s['error']} | {s['timeout']} | {_fmt(s['compile_ms_median'])} / {_fmt(s['compile_ms_p99'])} | "
                f"{_fmt(s['mask_us_median'], 0)} / {_fmt(s['mask_us_p99'], 0)} | "
                f"{s['valid_accepted']}/{s['valid_total']} ({s['valid_terminated']}) | "
                f"{s['invalid_rejected']}/{s['invalid_total']} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> None:
    folder = data_dir(args.data_dir)
    if folder is None:
        print("maskbench-dev not found: pass --data-dir, set RADIXFLOW_SHARED_DATA (the folder that holds "
              f"maskbench-dev/), or place it at {REPO_ROOT.parent / 'shared' / 'data' / 'maskbench-dev'}")
        return
    subsets = args.subsets.split(",") if args.subsets else None
    groups = select_files(folder, subsets, args.limit, args.seed)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.skip_masks:
        run_masks(args, groups, backends)
    if args.generate:
        run_generate(args, groups, backends)
    if args.decode:
        run_decode(args)


def run_masks(args: argparse.Namespace, groups: dict[str, list[Path]], backends: list[str]) -> None:
    report: dict = {**header("grammar", args), "results": {}, "per_schema": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for backend in backends:
        worker = Worker(backend, args.model_path)
        per_subset: dict = {}
        per_schema = report["per_schema"][backend] = {}
        report["results"][backend] = per_subset
        everything: list[dict] = []
        t0 = time.time()
        for subset, files in groups.items():
            results = [worker.measure(path, args.seed, args.timeout) for path in files]
            for path, r in zip(files, results):
                per_schema[path.name] = {k: v for k, v in r.items() if k in ("status", "compile_ms", "error")}
            everything += results
            per_subset[subset] = summarize(results)
            per_subset["ALL"] = summarize(everything)  # so far; a long run keeps what it finished
            _write_report(out, report)
            print(f"[{backend}] {subset}: {json.dumps(per_subset[subset])}", flush=True)
        worker.stop()
        print(f"[{backend}] done in {time.time() - t0:.0f}s; ALL: {json.dumps(per_subset['ALL'])}", flush=True)
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def _write_report(out: Path, report: dict) -> None:
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))


def run_generate(args: argparse.Namespace, groups: dict[str, list[Path]], backends: list[str]) -> None:
    from runtime.bench.grammar_generate import markdown as generate_markdown
    from runtime.bench.grammar_generate import sweep_backend
    from runtime.demo.checkpoint import demo_model_path

    model = args.model_path or str(demo_model_path("qwen2", "tiny", args.dtype))
    report = {**header("grammar", args), "model": model, "max_new_tokens": args.generate_max_new_tokens,
              "results": {}}
    out = Path(args.out).with_name(Path(args.out).stem + "-generate.json")

    def write(backend: str, result: dict) -> str:
        report["results"][backend] = result
        out.write_text(json.dumps(report, indent=1) + "\n")
        md = f"# bench grammar --generate\n\n`{report['command']}`\n\n{report['machine']}.\n" + \
            generate_markdown(report["results"], args.generate_max_new_tokens)
        out.with_suffix(".md").write_text(md)
        return md

    for backend in backends:  # written after each subset: a long sweep keeps what it finished
        md = write(backend, sweep_backend(backend, groups, model, args.generate_max_new_tokens, args.timeout,
                                          on_subset=lambda partial, b=backend: write(b, partial)))
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def run_decode(args: argparse.Namespace) -> None:
    from runtime.bench.constrained_decode import run_decode_comparison
    from runtime.demo.checkpoint import demo_model_path

    model = args.model_path or str(demo_model_path("qwen2", "small", args.dtype))
    report = {**header("grammar", args), "model": model, **run_decode_comparison(model, args.dtype)}
    out = Path(args.out).with_name("grammar-decode.json")
    for path in write_results(out, report, decode_markdown(report)):
        print(f"wrote {path}")


def decode_markdown(report: dict) -> str:
    jump = report["jump_forward"]
    return "\n".join([
        f"`{Path(report['model']).name}`, {report['batch_size']} requests with one JSON schema, sampled; "
        f"medians of {report['repeats']} alternating runs.", "",
        "| constrained tok/s | unconstrained tok/s (same lengths) | constrained / unconstrained | valid JSON |",
        "|---|---|---|---|",
        f"| {report['constrained_tokens_per_s']} | {report['unconstrained_tokens_per_s']} | "
        f"{report['constrained_vs_unconstrained']}x | {report['valid_json_of_stopped']} |", "",
        "| jump-forward | decode steps | elapsed s | speed-up | texts identical to off |", "|---|---|---|---|---|",
        f"| off | {report['jump_forward_off']['steps']} | {report['jump_forward_off']['elapsed_s']} | - | - |",
        f"| on | {report['jump_forward_on']['steps']} | {report['jump_forward_on']['elapsed_s']} | "
        f"{jump['speedup']}x | {jump['identical_texts']}/{jump['of']} |"])
