"""`radixflow bench roofline`: how far a decode step and a prefill chunk are from what this
machine allows, phase by phase.

For each thread count and batch size:
  * the machine: read bandwidth (a sum over 1 GiB) and GEMM rate (a large matmul in the
    model dtype), measured here with that many torch threads;
  * per phase of the model (attention projections, attention over the KV, MLP, lm_head,
    sampling, the rest: norms, rotary, residuals, embedding), the bytes it must read and the
    FLOPs it must do; its roofline is max(bytes / bandwidth, FLOPs / GEMM rate), and our time
    is measured in-process on the real layers (timers around each phase's modules);
  * the phases outside the model, measured as the difference between two real runs: the
    engine process's scheduling and batch building (its decode step minus the model forward
    and sampling), its loop and IPC (the gap between two decode steps), and the API server
    with HTTP (a streaming client's time per output token against a live `radixflow serve`,
    minus the engine's step). Their roofline is 0: all of their time is overhead.

Decode: B requests, each with `--context` tokens of KV, one new token each. Prefill: one
request of `--prefill-tokens` new tokens over an empty cache.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from functools import partial

DEFAULT_OUT = "docs/bench/roofline-{model}.json"
MODEL_PHASES = ("attention projections", "attention", "MLP", "lm_head", "sampling", "norms, rotary, residual")
ENGINE_PHASES = ("scheduling", "engine loop and IPC", "API server and HTTP")


def add_parser(sub) -> None:
    p = sub.add_parser("roofline", help="a decode step and a prefill chunk against this machine's limits")
    p.add_argument("--model", default="demo-small", help="smollm2 | demo-small | a checkpoint directory")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--context", type=int, default=512, help="KV tokens per request in the decode step")
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (median)")
    p.add_argument("--no-server", action="store_true", help="skip the engine and HTTP measurements")
    p.add_argument("--out", default=None, help=f"default: {DEFAULT_OUT}")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- the machine


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _apply_all(layers, x) -> None:
    for layer in layers:
        layer(x)


def measure_machine(dtype) -> dict:
    """Read bandwidth (GB/s) and GEMM rate (GFLOP/s in `dtype`) with the current threads.
    The bandwidth is the faster of two kernels that stream 1 GiB: an fp32 sum, and
    one-row products with 1 GiB of weights through the engine's own linear layer (oneDNN's
    reads outrun the sum on this CPU)."""
    import torch
    import torch.nn.functional as F

    from runtime.layers.linear import OneDNNLinear, onednn_packing_available

    buf = torch.ones(256 << 20, dtype=torch.float32)  # 1 GiB: far past every cache
    sum_read = buf.numel() * 4 / _median_time(buf.sum, 5)
    del buf
    rows, cols = 16384, 1024  # a wide, short weight like gate|up: 32 MiB in bf16, 32 of them
    count = (1 << 30) // (rows * cols * dtype.itemsize)
    if onednn_packing_available(dtype, "cpu"):
        layers = [OneDNNLinear(torch.randn(rows, cols, dtype=dtype), None) for _ in range(count)]
    else:
        layers = [partial(F.linear, weight=torch.randn(rows, cols, dtype=dtype)) for _ in range(count)]
    x = torch.randn(1, cols, dtype=dtype)

    with torch.inference_mode():
        gemv_read = len(layers) * rows * cols * dtype.itemsize / _median_time(lambda: _apply_all(layers, x), 3)
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    gemm = 2 * n ** 3 / _median_time(lambda: torch.mm(a, b), 5)
    return {"read_bandwidth_gb_s": max(sum_read, gemv_read) / 1e9, "sum_read_gb_s": sum_read / 1e9,
            "gemv_read_gb_s": gemv_read / 1e9, "gemm_gflop_s": gemm / 1e9}


# ----------------------------------------------------------------------------- model phases


class PhaseTimer:
    """Wall time per phase, from timers put around module forwards (CPU ops are synchronous)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj, attr: str, phase: str) -> None:
        original = getattr(obj, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start

        setattr(obj, attr, timed)

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - start


def _numel(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


class ModelUnderTest:
    """The real model and attention backend, driven without the scheduler."""

    def __init__(self, path: str, dtype_name: str) -> None:
        import torch

        from runtime.cache.kv_pool import KVPool
        from runtime.config import ModelConfig
        from runtime.layers.attention import TorchNativeBackend
        from runtime.layers.linear import onednn_packing_available
        from runtime.models.loader import load_model

        self.dtype = getattr(torch, dtype_name)
        self.mc = mc = ModelConfig.from_hf(path)
        self.model = load_model(path, mc, self.dtype, "cpu")
        self.pool_cls, self.backend_cls, self.pool = KVPool, TorchNativeBackend, None
        layers = self.model.model.layers
        lm_head = self.model.lm_head or self.model.model.embed_tokens
        self.params = {  # weights each phase reads per step
            "attention projections": _numel([m for layer in layers for m in (layer.self_attn.qkv_proj,
                                                                              layer.self_attn.o_proj)]),
            "MLP": _numel([layer.mlp for layer in layers]),
            "lm_head": lm_head.weight.numel(),
        }
        if onednn_packing_available(self.dtype, "cpu"):  # as the engine does by default
            self.model.pack_for_onednn()  # (the weights were counted above)
        self.timer = PhaseTimer()
        for layer in layers:
            self.timer.wrap(layer.self_attn.qkv_proj, "forward", "attention projections")
            self.timer.wrap(layer.self_attn.o_proj, "forward", "attention projections")
            self.timer.wrap(layer.mlp, "forward", "MLP")
        self.timer.wrap(self.model, "compute_logits", "lm_head")

    def costs(self, tokens: int, kv_reads: int, attn_pairs: int, logit_rows: int) -> dict[str, tuple[float, float]]:
        """Per phase (bytes, FLOPs) for `tokens` new tokens, `kv_reads` KV tokens read per
        layer (summed over requests), `attn_pairs` query-key pairs per layer and
        `logit_rows` rows of logits."""
        mc, size = self.mc, self.dtype.itemsize
        kv_bytes = mc.num_layers * kv_reads * 2 * mc.num_kv_heads * mc.head_dim * size
        return {
            "attention projections": (self.params["attention projections"] * size,
                                      2 * tokens * self.params["attention projections"]),
            "attention": (kv_bytes, mc.num_layers * attn_pairs * 4 * mc.num_heads * mc.head_dim),
            "MLP": (self.params["MLP"] * size, 2 * tokens * self.params["MLP"]),
            "lm_head": (self.params["lm_head"] * size, 2 * logit_rows * self.params["lm_head"]),
            "sampling": (logit_rows * mc.vocab_size * size, logit_rows * mc.vocab_size),
        }

    def _batch(self, seq_lens: list[int], new_tokens: list[int]):
        """A ForwardBatch over fresh slots: request b holds seq_lens[b] tokens of KV, the
        last new_tokens[b] of them written by this step."""
        import torch

        from runtime.engine.forward_batch import ForwardBatch, ForwardMode

        need = sum(seq_lens) + 1
        if self.pool is None or self.pool.num_slots < need:
            mc = self.mc
            self.pool = self.pool_cls(mc.num_layers, need, mc.num_kv_heads, mc.head_dim, self.dtype, "cpu")
            for buf in self.pool.k_buffers + self.pool.v_buffers:
                buf.normal_()  # real-looking values: uninitialised memory may hold NaN/denormals
            self.attn = self.backend_cls(self.pool, mc.num_heads, mc.num_kv_heads, mc.head_dim)
        width, rows, start = max(seq_lens), [], 1  # slot 0: the padding page
        for n in seq_lens:
            rows.append(list(range(start, start + n)) + [0] * (width - n))
            start += n
        kv = torch.tensor(rows, dtype=torch.int64)
        out_loc = torch.cat([kv[b, n - e:n] for b, (n, e) in enumerate(zip(seq_lens, new_tokens))])
        positions = torch.cat([torch.arange(n - e, n) for n, e in zip(seq_lens, new_tokens)])
        decode = all(e == 1 for e in new_tokens)
        return ForwardBatch(
            mode=ForwardMode.DECODE if decode else ForwardMode.EXTEND,
            input_ids=torch.randint(0, self.mc.vocab_size, (len(positions),)), positions=positions,
            out_cache_loc=out_loc, extend_lens=list(new_tokens), seq_lens=list(seq_lens), kv_indices=kv,
            logits_indices=torch.cumsum(torch.tensor(new_tokens), 0) - 1)

    def time_step(self, seq_lens: list[int], new_tokens: list[int], steps: int) -> dict[str, float]:
        """Median seconds per phase (and "total") of one step, over `steps` timed steps."""
        import torch

        from runtime.engine.sampler import greedy_tokens

        fb = self._batch(seq_lens, new_tokens)
        per_step = []
        with torch.inference_mode():
            for i in range(steps + 2):  # two untimed warm-up steps
                self.timer.seconds.clear()
                start = time.perf_counter()
                self.attn.init_forward_metadata(fb)
                hidden = self.model(fb.input_ids, fb.positions, fb, self._timed_attention())
                logits = self.model.compute_logits(hidden.index_select(0, fb.logits_indices), float32=False)
                with self.timer.phase("sampling"):
                    greedy_tokens(logits)
                total = time.perf_counter() - start
                if i >= 2:
                    per_step.append({**self.timer.seconds, "total": total})
        out = {k: statistics.median(s.get(k, 0.0) for s in per_step) for k in per_step[0]}
        out["norms, rotary, residual"] = max(0.0, out["total"] - sum(out.get(p, 0.0) for p in MODEL_PHASES[:5]))
        return out

    def attention_paths(self, seq_lens: list[int], steps: int, rounds: int = 3) -> dict[str, dict[str, float]] | None:
        """Decode step and attention seconds on the CPU slot kernels vs the gather path,
        alternating `rounds` times (medians); None where the slot kernels are not in use."""
        self._batch(seq_lens, [1] * len(seq_lens))  # builds the backend
        if not getattr(self.attn, "slot_kernels", False):
            return None
        runs: dict[str, list[dict[str, float]]] = {"slot kernels": [], "gather": []}
        try:
            for _ in range(rounds):
                for path in runs:
                    self.attn.slot_kernels = path == "slot kernels"
                    runs[path].append(self.time_step(seq_lens, [1] * len(seq_lens), steps))
        finally:
            self.attn.slot_kernels = True
        return {path: {k: statistics.median(r[k] for r in rs) for k in ("total", "attention")}
                for path, rs in runs.items()}

    def _timed_attention(self):
        timer, attn = self.timer, self.attn

        class Timed:
            def forward(self, *args):
                with timer.phase("attention"):
                    return attn.forward(*args)

        return Timed()


# ----------------------------------------------------------------------------- engine and server


def measure_engine(path: str, dtype: str, threads: int, batch: int, context: int, steps: int) -> dict:
    """Decode steps of the real engine (child process) at this batch size: medians of the
    step's wall time, its model forward, and the gap to the next step (loop + IPC)."""
    import random

    from runtime.core import GetStepTimes, ResetStepTimes
    from runtime.engine.api import Engine

    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 30000) for _ in range(context)] for _ in range(batch)]
    with Engine(path, dtype=dtype, num_threads=threads, disable_radix_cache=True, max_running_requests=batch,
                max_total_tokens=batch * (context + steps + 16) + 64, extra={"record_step_times": True}) as engine:
        engine.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 2})
        engine._control(ResetStepTimes())
        engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": steps + 2, "ignore_eos": True,
                                                             "temperature": 0})
        records = engine._control(GetStepTimes()).result
    decode = [s for s in records if s["mode"] == "decode" and s["batch_size"] == batch]
    gaps = [b["start"] - a["start"] - a["wall"] for a, b in zip(records, records[1:])
            if a in decode and b in decode]
    return {"step_s": statistics.median(s["wall"] for s in decode),
            "forward_s": statistics.median(s["forward"] for s in decode),
            "gap_s": statistics.median(gaps) if gaps else 0.0}


def measure_server(path: str, dtype: str, threads: int, batch: int, context: int, steps: int) -> float:
    """Median time between output tokens seen by `batch` concurrent streaming clients of a live
    `radixflow serve` (random prompts of about `context` tokens)."""
    import asyncio

    from runtime.bench.serve import run_load, server_model
    from runtime.bench.serve.workloads import Shape
    from runtime.bench.servers import start_radixflow

    server = start_radixflow(path, ["--dtype", dtype, "--num-threads", str(threads), "--disable-radix-cache"])
    try:
        shape = Shape(num_sessions=batch, input_len=(context, context), output_len=(steps, steps))
        result = asyncio.run(run_load(server.url, "openai", server_model(server.url, None), "random", shape, seed=0,
                                      max_concurrency=batch, request_rate=float("inf"), warmup=1,
                                      progress=False))
    finally:
        server.stop()
    summary = result["summary"]
    if summary["errors"]:
        raise RuntimeError(f"the server failed requests: {summary['first_error']}")
    return summary["itl_s"]["median"]  # the median gap between streamed tokens: robust to one stall


# ----------------------------------------------------------------------------- the report


def phase_rows(costs: dict, ours: dict, machine: dict) -> list[dict]:
    bw, rate = machine["read_bandwidth_gb_s"] * 1e9, machine["gemm_gflop_s"] * 1e9
    rows = []
    for phase in MODEL_PHASES:
        nbytes, flops = costs.get(phase, (0.0, 0.0))
        rows.append({"phase": phase, "bytes": nbytes, "flops": flops, "roofline_s": max(nbytes / bw, flops / rate),
                     "ours_s": ours.get(phase, 0.0)})
    return rows


def run(args: argparse.Namespace) -> None:
    import torch

    from runtime.bench import results
    from runtime.bench.compare import out_stem, resolve

    model = resolve(args.model)
    mut = ModelUnderTest(model.hf_dir, args.dtype)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    report = {**results.header("roofline", args), "model": model.name, "path": model.hf_dir,
              "context": args.context, "prefill_tokens": args.prefill_tokens, "runs": []}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        machine = measure_machine(mut.dtype)
        print(f"threads {threads}: {machine['read_bandwidth_gb_s']:.1f} GB/s read, "
              f"{machine['gemm_gflop_s']:.0f} GFLOP/s {args.dtype} GEMM", flush=True)
        for batch in batches:
            seq = args.context + 1
            ours = mut.time_step([seq] * batch, [1] * batch, args.steps)
            rows = phase_rows(mut.costs(batch, batch * seq, batch * seq, batch), ours, machine)
            run = {"kind": "decode", "threads": threads, "batch": batch, "machine": machine, "phases": rows,
                   "forward_s": ours["total"]}
            paths = mut.attention_paths([seq] * batch, max(5, args.steps // 2))
            if paths:
                run["attention_paths"] = paths
            if not args.no_server:
                engine = measure_engine(model.hf_dir, args.dtype, threads, batch, args.context, args.steps)
                served = measure_server(model.hf_dir, args.dtype, threads, batch, args.context, args.steps)
                outside = (engine["step_s"] - ours["total"], engine["gap_s"],
                           served - engine["step_s"] - engine["gap_s"])
                rows += [{"phase": phase, "bytes": 0, "flops": 0, "roofline_s": 0.0, "ours_s": max(0.0, seconds)}
                         for phase, seconds in zip(ENGINE_PHASES, outside)]
                run.update(engine_step_s=engine["step_s"], served_itl_s=served)
            _finish(run)
            report["runs"].append(run)
            print(_line(run), flush=True)
        p = args.prefill_tokens
        ours = mut.time_step([p], [p], max(3, args.steps // 4))
        # each token's K/V is read once per layer (tiled attention); the pairs still cost FLOPs
        rows = phase_rows(mut.costs(p, p, p * (p + 1) // 2, 1), ours, machine)
        run = {"kind": "prefill", "threads": threads, "batch": 1, "machine": machine, "phases": rows,
               "forward_s": ours["total"]}
        _finish(run)
        report["runs"].append(run)
        print(_line(run), flush=True)
    out = args.out or DEFAULT_OUT.format(model=out_stem(args.model))
    for path in results.write(out, report, markdown(report)):
        print(f"wrote {path}")


def _finish(run: dict) -> None:
    run["roofline_s"] = sum(r["roofline_s"] for r in run["phases"])
    run["ours_s"] = sum(r["ours_s"] for r in run["phases"])
    run["ratio"] = run["ours_s"] / run["roofline_s"]


def _line(run: dict) -> str:
    return (f"{run['kind']} threads {run['threads']} batch {run['batch']}: roofline {run['roofline_s'] * 1e3:.1f} ms, "
            f"ours {run['ours_s'] * 1e3:.1f} ms ({run['ratio']:.2f}x; model forward {run['forward_s'] * 1e3:.1f} ms)")


def markdown(report: dict) -> str:
    lines = [f"Model `{report['model']}`; decode: each request holds {report['context']} tokens of KV; prefill: "
             f"{report['prefill_tokens']} new tokens. Roofline = max(bytes / read bandwidth, FLOPs / GEMM rate) "
             "per phase, both measured on this machine with the same threads; phases outside the model "
             "have a roofline of 0.", "",
             "| step | threads | batch | bandwidth GB/s | GEMM GFLOP/s | roofline ms | ours ms | ours / roofline |"
             " model forward ms | engine step ms | served ms between tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        m = run["machine"]
        extra = (f"{run['engine_step_s'] * 1e3:.1f} | {run['served_itl_s'] * 1e3:.1f}"
                 if "served_itl_s" in run else "- | -")
        lines.append(f"| {run['kind']} | {run['threads']} | {run['batch']} | {m['read_bandwidth_gb_s']:.1f} | "
                     f"{m['gemm_gflop_s']:.0f} | {run['roofline_s'] * 1e3:.2f} | {run['ours_s'] * 1e3:.2f} | "
                     f"{run['ratio']:.2f}x | {run['forward_s'] * 1e3:.2f} | {extra} |")
    paths = [run for run in report["runs"] if "attention_paths" in run]
    if paths:
        lines += ["", "Decode attention read straight from the pool's slots (CPU slot kernels, the default) vs "
                  "gathered into a padded copy first (the torch path), alternating in this run (medians):", "",
                  "| threads | batch | step ms: slots / gather | attention ms: slots / gather | attention speed-up |",
                  "|---|---|---|---|---|"]
        for run in paths:
            a, b = run["attention_paths"]["slot kernels"], run["attention_paths"]["gather"]
            lines.append(f"| {run['threads']} | {run['batch']} | {a['total'] * 1e3:.1f} / {b['total'] * 1e3:.1f} | "
                         f"{a['attention'] * 1e3:.1f} / {b['attention'] * 1e3:.1f} | "
                         f"{b['attention'] / a['attention']:.2f}x |")
    for run in report["runs"]:
        lines += ["", f"{run['kind']}, {run['threads']} threads, batch {run['batch']}:", "",
                  "| phase | MB read | GFLOP | roofline ms | ours ms | ours / roofline |", "|---|---|---|---|---|---|"]
        for r in run["phases"]:
            ratio = f"{r['ours_s'] / r['roofline_s']:.1f}x" if r["roofline_s"] else "-"
            lines.append(f"| {r['phase']} | {r['bytes'] / 1e6:.1f} | {r['flops'] / 1e9:.2f} | "
                         f"{r['roofline_s'] * 1e3:.2f} | {r['ours_s'] * 1e3:.2f} | {ratio} |")
    return "\n".join(lines)
