"""`radixflow bench quant`: weight-only quantization (runtime/layers/quant.py) on the real
default model — quality against the unquantized model and decode speed, per configuration.

  kernels   per linear shape of the model and rows: the dense linear in the model dtype, each
            quantized kernel, and dequantize + matmul (the path above KERNEL_MAX_ROWS)
  quality   teacher-forced over held texts (the project's docs in chunks, and short chat
            prompts from the spec workloads): mean KL(p_ref || p_quant) of the next-token
            distribution and top-1 agreement, the reference being the same checkpoint
            unquantized in the same dtype (transformers' model with our quantized layers
            swapped in: the weights the engine serves)
            (the int8 KV cache lives in the engine only: its top-1 agreement comes from the
            engine's prompt logprobs, with the mean |difference| of the real tokens' logprobs)
  greedy    greedy continuations through the engine, identical to the unquantized engine's
  speed     decode tokens/s through the engine at batch 1 and 16 (one engine per
            configuration, all up, alternating); resident memory of each engine process
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import time
from pathlib import Path

import torch

from runtime.bench.spec_workloads import WORKLOADS
from runtime.kernels import cpu_extension

DEFAULT_OUT = "docs/bench/quant.json"
GPTQ = {"quantization_method": "gptq"}
CONFIGS = {  # label -> engine options
    "none": {},
    "int8": {"quantization": "int8"},
    "int8-g32": {"quantization": "int8", "quantization_group_size": 32},
    "int8-g32+head8": {"quantization": "int8", "quantization_group_size": 32, "lm_head_quantization": "int8"},
    "int8-gptq": {"quantization": "int8", **GPTQ},
    "int8+head8-gptq": {"quantization": "int8", "lm_head_quantization": "int8", **GPTQ},
    "int4": {"quantization": "int4"},
    "int4+head8": {"quantization": "int4", "lm_head_quantization": "int8"},
    "int4+head4": {"quantization": "int4", "lm_head_quantization": "int4"},
    "kv-int8": {"kv_cache_dtype": "int8"},
}
# label -> (decode speed-up at batch 1, top-1 agreement): the issue's int8 and int4 floors, for
# every config of that weight format
FLOORS = {"int8": (1.3, 0.97), "int8-g32": (1.3, 0.97), "int8-g32+head8": (1.3, 0.97),
          "int8-gptq": (1.3, 0.97), "int8+head8-gptq": (1.3, 0.97), "int4": (1.6, 0.90),
          "int4+head8": (1.6, 0.90)}
KERNEL_ROWS = (1, 4, 16, 32, 128)


def add_parser(sub) -> None:
    p = sub.add_parser("quant", help="weight-only int8/int4 quantization: quality vs unquantized, decode speed")
    p.add_argument("--model-path", default=None, help="default: the default model (SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", help="the unquantized model's (and the activations') dtype; auto: "
                                                  "what the engine picks (float32 on CPUs without fast bf16)")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--doc-chunks", type=int, default=24, help="teacher-forced chunks of the project's docs")
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--prompts", type=int, default=200, help="teacher-forced short chat prompts")
    p.add_argument("--greedy-prompts", type=int, default=24)
    p.add_argument("--greedy-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.set_defaults(func=run)


# ---- held texts -----------------------------------------------------------------
def held_texts(tokenizer, args) -> list[list[int]]:
    """Token id lists: docs chunks, then chat-formatted prompts (fixed seeds: the same texts each run)."""
    root = Path(__file__).resolve().parents[2]
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    ids = tokenizer.encode("\n\n".join(p.read_text(encoding="utf-8") for p in docs if p.is_file()),
                           add_special_tokens=False)
    n = args.chunk_tokens
    chunks = [ids[i:i + n] for i in range(0, len(ids) - n + 1, n)][:args.doc_chunks]
    return chunks + [tokenizer.encode(p, add_special_tokens=False) for p in chat_prompts(tokenizer, args.prompts)]


def chat_prompts(tokenizer, count: int) -> list[str]:
    names = list(WORKLOADS)
    out = []
    for i in range(count):
        conv = WORKLOADS[names[i % len(names)]](random.Random(i), i)
        out.append(tokenizer.apply_chat_template(conv.messages, add_generation_prompt=True, tokenize=False))
    return out


# ---- quality --------------------------------------------------------------------
def hf_model(checkpoint: str, dtype: torch.dtype, options: dict):
    """transformers' model of the checkpoint, its linears replaced by ours as the engine
    would (quantized from float32, GPTQ's integers from the same cache, the rest then cast).
    Every row goes through the quantized kernels, as decode steps do (prefill's dequantized
    weights are closer)."""
    from transformers import AutoModelForCausalLM

    from runtime.layers.gptq import gptq_int8_weights
    from runtime.layers.quant import quantize_decoder, rounded_int8, set_kernel_max_rows

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    head_method = options.get("lm_head_quantization", "none")
    lookup = None
    if options.get("quantization_method") == "gptq":
        rounded = gptq_int8_weights(checkpoint, include_head=head_method == "int8")
        lookup = functools.partial(rounded_int8, rounded)
    _, head = quantize_decoder(model.model.layers, model.lm_head, options.get("quantization", "none"),
                               options.get("quantization_group_size"), head_method, lookup)
    if head is not None:
        model.lm_head = head
    for param in model.parameters():
        param.data = param.data.to(dtype)
    set_kernel_max_rows(model, 1 << 30)
    return model


def weight_mib(model) -> float:
    """Parameters plus quantized layers' storage (a tied head counted once)."""
    from runtime.layers.quant import QuantizedLinear

    params = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    quantized = sum(m.storage_bytes() for m in model.modules() if isinstance(m, QuantizedLinear))
    return round((sum(params.values()) + quantized) / 2**20, 1)


@torch.inference_mode()
def next_token_logprobs(model, texts: list[list[int]]) -> list[torch.Tensor]:
    """Per text: float32 log-probabilities [len - 1, vocab] of each next token."""
    return [torch.log_softmax(model(torch.tensor([t])).logits[0, :-1].float(), dim=-1) for t in texts]


def compare_distributions(ref: list[torch.Tensor], got: list[torch.Tensor]) -> dict:
    kl, agree, total = 0.0, 0, 0
    for r, g in zip(ref, got):
        kl += float((r.exp() * (r - g)).sum())  # sum over positions of KL(ref || got)
        agree += int((r.argmax(-1) == g.argmax(-1)).sum())
        total += r.shape[0]
    return {"positions": total, "mean_kl": round(kl / total, 5), "top1_agreement": round(agree / total, 4)}


# ---- engine: greedy agreement, speed, memory ----------------------------------------
def prompt_agreement(reference, engine, texts: list[list[int]]) -> dict:
    """Teacher-forced through two engines: top-1 agreement of the next-token distribution at
    every prompt position, and the mean |difference| of the real next tokens' logprobs."""
    opts = {"return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 1}
    agree = total = 0
    diff = 0.0
    for ids in texts:
        a, b = (e.generate(input_ids=ids, sampling_params={"max_new_tokens": 1}, **opts)["meta_info"]
                for e in (reference, engine))
        for ta, tb, la, lb in zip(a["input_top_logprobs"][1:], b["input_top_logprobs"][1:],
                                  a["input_token_logprobs"][1:], b["input_token_logprobs"][1:]):
            agree += ta[0][1] == tb[0][1]
            diff += abs(la[0] - lb[0])
            total += 1
    return {"positions": total, "mean_kl": None, "top1_agreement": round(agree / total, 4),
            "mean_abs_logprob_diff": round(diff / total, 5)}


def greedy_outputs(engine, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    results = engine.generate(prompts, {"max_new_tokens": max_new_tokens, "temperature": 0.0})
    return [r["output_ids"] for r in results]


def decode_run(engine, prompts: list[str], batch: int, tokens: int) -> dict:
    params = {"max_new_tokens": tokens, "temperature": 0.0, "ignore_eos": True}
    engine.flush_cache()
    start = time.perf_counter()
    done = 0
    for first in range(0, len(prompts), batch):
        done += sum(len(r["output_ids"]) for r in engine.generate(prompts[first:first + batch], params))
    return {"elapsed_s": time.perf_counter() - start, "output_tokens": done}


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def kernel_table(model_config, dtype: torch.dtype) -> list[dict]:
    """Microseconds per call of each way to run each linear shape of the model: the
    engine's dense linear in the model dtype; each quantized layer through our kernel
    (computing in float32), through torch's kernel (in bf16 for a float32 model), and as
    dequantize + matmul."""
    import torch.nn.functional as F

    from runtime.layers.linear import OneDNNLinear, onednn_packing_available
    from runtime.layers.quant import Int4Linear, Int8Linear

    mc = model_config
    q_rows = (mc.num_heads + 2 * mc.num_kv_heads) * mc.head_dim
    shapes = {"qkv_proj": (q_rows, mc.hidden_size), "o_proj": (mc.hidden_size, mc.num_heads * mc.head_dim),
              "gate_up_proj": (2 * mc.intermediate_size, mc.hidden_size),
              "down_proj": (mc.hidden_size, mc.intermediate_size), "lm_head": (mc.vocab_size, mc.hidden_size)}

    def micros(fn, budget_s: float = 0.05) -> float:
        fn()
        times = []
        while sum(times) < budget_s and len(times) < 50:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return round(statistics.median(times) * 1e6, 1)

    rows_out = []
    for name, (n, k) in shapes.items():
        weight = torch.randn(n, k) * 0.05
        dense = OneDNNLinear(weight.to(dtype), None) if onednn_packing_available(dtype, "cpu") else None
        layers = {"int8": Int8Linear.from_float(weight), "int4": Int4Linear.from_float(weight)}
        for rows in KERNEL_ROWS:
            x = torch.randn(rows, k).to(dtype)
            row = {"layer": name, "shape": [n, k], "rows": rows,
                   "dense_us": micros(lambda: dense(x) if dense else F.linear(x, weight.to(dtype)))}
            for label, layer in layers.items():
                for kernel, ours in (("ours", True), ("torch", False)):
                    if ours and not cpu_extension.has_op(layer.OUR_KERNEL):
                        row[f"{label}_{kernel}_us"] = None
                        continue
                    layer.prepare(dtype, ours=ours)
                    layer.kernel_max_rows = 1 << 30  # the kernel at every row count, to see where it stops paying
                    row[f"{label}_{kernel}_us"] = micros(lambda layer=layer: layer(x))
                row[f"{label}_dequant_us"] = micros(lambda layer=layer: F.linear(x, layer.dequantize(dtype)))
            rows_out.append(row)
    return rows_out


def run(args: argparse.Namespace) -> None:
    from runtime.bench import results
    from runtime.bench.alternating import run_alternating
    from runtime.config import EngineConfig, ModelConfig
    from runtime.engine.api import Engine
    from runtime.models.resolve import resolve_model

    labels = args.configs.split(",")
    if labels[0] != "none":
        raise SystemExit("--configs must start with none (the reference)")
    checkpoint = resolve_model(args.model_path).path
    dtype = EngineConfig(dtype=args.dtype, device="cpu").resolved_dtype(ModelConfig.from_hf(checkpoint))
    dtype_name = str(dtype).removeprefix("torch.")
    report = {**results.header("quant", args, "transformers"), "model": checkpoint, "dtype": dtype_name,
              "configs": {label: CONFIGS[label] for label in labels}}
    print("kernels ...", flush=True)
    report["kernels"] = kernel_table(ModelConfig.from_hf(checkpoint), dtype)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = held_texts(tokenizer, args)
    print(f"quality over {len(texts)} texts ...", flush=True)
    model = hf_model(checkpoint, dtype, {})
    reference, report["weight_mib"] = next_token_logprobs(model, texts), {"none": weight_mib(model)}
    # the metrics' noise floor: the same unquantized weights in the other CPU dtype
    other = torch.bfloat16 if dtype == torch.float32 else torch.float32
    report["noise_floor"] = {"dtype": str(other).removeprefix("torch."), **compare_distributions(
        reference, next_token_logprobs(hf_model(checkpoint, other, {}), texts))}
    print(f"[quality, no quantization, {other}] {report['noise_floor']}", flush=True)
    report["quality"] = {}
    for label in labels[1:]:
        if "kv_cache_dtype" in CONFIGS[label]:
            continue  # measured through the engine below
        model = hf_model(checkpoint, dtype, CONFIGS[label])
        report["quality"][label] = compare_distributions(reference, next_token_logprobs(model, texts))
        report["weight_mib"][label] = weight_mib(model)
        print(f"[quality {label}] {report['quality'][label]}, weights {report['weight_mib'][label]} MiB", flush=True)
    del reference, model

    engines = {label: Engine(args.model_path, dtype=dtype_name, max_running_requests=16, **CONFIGS[label])
               for label in labels}
    try:
        for label in labels[1:]:
            if "kv_cache_dtype" in CONFIGS[label]:
                report["quality"][label] = prompt_agreement(engines["none"], engines[label], texts)
                report["weight_mib"][label] = report["weight_mib"]["none"]
                print(f"[quality {label}] {report['quality'][label]}", flush=True)
        prompts = chat_prompts(tokenizer, max(args.greedy_prompts, 16))
        greedy = {label: greedy_outputs(e, prompts[:args.greedy_prompts], args.greedy_tokens)
                  for label, e in engines.items()}
        report["greedy"] = {label: {"identical": sum(a == b for a, b in zip(outs, greedy["none"])),
                                    "of": len(outs)} for label, outs in greedy.items()}
        report["speed"] = {}
        for batch in (1, 16):
            batch_prompts = prompts[:4] if batch == 1 else prompts[:16]
            sides = {label: (lambda e=e, b=batch, p=batch_prompts: decode_run(e, p, b, args.decode_tokens))
                     for label, e in engines.items()}
            rows = run_alternating(sides, args.repeats)
            base = rows["none"]["output_tokens"] / rows["none"]["elapsed_s"]
            report["speed"][str(batch)] = {
                label: {"tokens_per_s": round(r["output_tokens"] / r["elapsed_s"], 1),
                        "speedup": round(r["output_tokens"] / r["elapsed_s"] / base, 3),
                        "elapsed_s_runs": [round(t, 3) for t in r["elapsed_s_runs"]]} for label, r in rows.items()}
            print(f"[speed batch {batch}] " + ", ".join(f"{label} {c['tokens_per_s']} tok/s {c['speedup']}x"
                                                        for label, c in report["speed"][str(batch)].items()),
                  flush=True)
        report["resident_mib"] = {label: resident_mib(e._process.pid) for label, e in engines.items()}
    finally:
        for engine in engines.values():
            engine.shutdown()
    report["floors"] = floors(report)
    for path in results.write(args.out, report, markdown(report)):
        print(f"wrote {path}")


def floors(report: dict) -> list[dict]:
    out = []
    for label, (speed_floor, top1_floor) in FLOORS.items():
        if label not in report["quality"]:
            continue
        speed = report["speed"]["1"][label]["speedup"]
        top1 = report["quality"][label]["top1_agreement"]
        out.append({"what": f"{label}: decode speed-up at batch 1", "floor": speed_floor, "reached": speed,
                    "met": speed >= speed_floor})
        out.append({"what": f"{label}: top-1 agreement", "floor": top1_floor, "reached": top1,
                    "met": top1 >= top1_floor})
    return out


def markdown(report: dict) -> str:
    labels = list(report["configs"])
    lines = [f"Model `{report['model']}` ({report['dtype']}); reference: the same checkpoint unquantized. "
             "Quality teacher-forced over held texts; decode through the engine (ignore_eos, one engine per "
             "configuration, alternating, medians).", "",
             "| config | mean KL | top-1 agreement | greedy identical | decode tok/s batch 1 | batch 16 | weights MiB "
             "| engine RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for label in labels:
        q = report["quality"].get(label)
        g = report["greedy"][label]
        s1, s16 = report["speed"]["1"][label], report["speed"]["16"][label]
        if q is None:
            quality = "(reference) | (reference)"
        else:
            kl = "n/a (engine only)" if q["mean_kl"] is None else q["mean_kl"]
            quality = f"{kl} | {q['top1_agreement']:.2%}"
        lines.append(f"| {label} | {quality} | {g['identical']}/{g['of']} | {s1['tokens_per_s']} "
                     f"({s1['speedup']}x) | {s16['tokens_per_s']} ({s16['speedup']}x) | "
                     f"{report['weight_mib'][label]} | {report['resident_mib'][label]} |")
    noise = report["noise_floor"]
    lines += ["", f"Noise floor of the quality metrics: the unquantized weights in {noise['dtype']} vs the reference: "
              f"mean KL "
              f"{noise['mean_kl']}, top-1 agreement {noise['top1_agreement']:.2%} over {noise['positions']} positions. "
              "Quality goes through the quantized kernels at every position, as decode does.", ""]
    lines += ["", f"Linear layers, microseconds per call (median): dense {report['dtype']}; each quantized layer "
              "through our kernel (float32 compute, activations in the model dtype), through torch's (bf16 "
              "activations for a float32 model), and as dequantize + matmul (what the engine runs above 32 rows).", "",
              "| layer | shape | rows | dense | int8 ours | int8 torch | int8 dequant | int4 ours | int4 torch "
              "| int4 dequant |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["kernels"]:
        cells = [r[f"{q}_{how}_us"] for q in ("int8", "int4") for how in ("ours", "torch", "dequant")]
        lines.append(f"| {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | {r['rows']} | {r['dense_us']} | "
                     + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    from runtime.bench.results import floors_markdown

    return "\n".join(lines + floors_markdown(report["floors"]))
