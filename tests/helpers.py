"""Shared test helpers: drive an in-process EngineCore, compute transformers references."""

from __future__ import annotations

import functools
import random
import time

import pytest
import torch

from runtime.config import EngineConfig, cpu_has_fast_bf16
from runtime.core import GenerateRequest, RequestOptions, SamplingParams

ARCHS = ("llama", "qwen2", "qwen3", "mistral")
# oneDNN's bf16 linear needs AVX512 (bw/vl/dq) or AVX-NE-CONVERT; some x86 CPUs (AVX2-only EPYCs) lack them
BF16_ONEDNN = cpu_has_fast_bf16()
needs_bf16_onednn = pytest.mark.skipif(not BF16_ONEDNN, reason="this CPU has no oneDNN bf16 path (AVX512 bw/vl/dq or "
                                                               "AVX-NE-CONVERT): bf16 models use F.linear here")
PROMPT_LENS = (1, 5, 17, 64, 100, 150, 233, 300)


def random_prompts(lens=PROMPT_LENS, seed=0, vocab=151_643) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lens]


def make_core(model_path, **options):
    from runtime.engine.engine_loop import EngineCore

    options.setdefault("max_total_tokens", 4096)
    options.setdefault("max_running_requests", 16)
    return EngineCore(EngineConfig(model_path=str(model_path), **options), str(model_path))


def without_step_timing(core):
    """Stop the drafter's cost model learning from measured step times, so which drafts get
    verified depends only on the outputs, not on the machine's load (the same drafts every run)."""
    core.scheduler.drafter.costs.observe = lambda *args, **kwargs: None
    return core


def run_core(core, prompts, params: dict | list[dict], stagger_steps: int = 0, **options) -> dict[str, dict]:
    """Submit prompts (one every `stagger_steps` steps when > 0) and step until all end;
    `options` are RequestOptions fields. Returns rid -> {"output_ids", "finish_reason",
    "logprobs", "cached_tokens", ...}."""
    params_list = params if isinstance(params, list) else [params] * len(prompts)
    opts = RequestOptions(**options)
    pending = [GenerateRequest(rid=f"r{i}", input_ids=p, sampling_params=SamplingParams(**sp), options=opts)
               for i, (p, sp) in enumerate(zip(prompts, params_list))]
    results: dict[str, dict] = {}
    steps = 0
    while pending or core.scheduler.has_work:
        if pending and (stagger_steps == 0 or steps % stagger_steps == 0):
            batch = pending if stagger_steps == 0 else pending[:1]
            pending = pending[len(batch):]
            for req in batch:
                _collect(results, core.handle(req))
        _collect(results, core.step())
        if core.scheduler.last_batch is None and core.scheduler.has_work:
            time.sleep(0.001)  # only grammars compiling: wait as the engine loop does
        steps += 1
        assert steps < 100_000, "engine made no progress"
    return results


def _collect(results: dict, outs) -> None:
    for out in outs:
        r = results.setdefault(out.rid, {"output_ids": [], "logprobs": [], "top_logprobs": []})
        r["output_ids"] += out.new_token_ids
        if out.output_token_logprobs:
            r["logprobs"] += [lp for lp, _ in out.output_token_logprobs]
            r["top_logprobs"] += out.output_top_logprobs
        if out.input_token_logprobs is not None:
            r["input_logprobs"] = out.input_token_logprobs
        if out.finished:
            r["finish_reason"] = out.finish_reason
            r["cached_tokens"] = out.cached_tokens
            r["completion_tokens"] = out.completion_tokens


@functools.lru_cache(maxsize=8)
def hf_model(model_path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


def hf_greedy(model_path, prompt: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
    """transformers generate(do_sample=False), one prompt at a time (no padding), with
    the log_softmax of each step's logits at the chosen token."""
    model = hf_model(str(model_path))
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=151643)
    ids = out.sequences[0, len(prompt):].tolist()
    lps = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, ids)]
    return ids, lps
