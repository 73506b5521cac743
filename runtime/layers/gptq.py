"""GPTQ rounding for the int8 layers (Frantar et al., 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers"), calibrated on texts that ship with Python.

Round to nearest (quant.Int8Linear.from_float) rounds every weight on its own. GPTQ rounds a
weight's columns in order and moves each column's rounding error onto the columns not yet
rounded, through the inverse of H = X^T X (X: [tokens, in], the layer's inputs over calibration
texts), so that the layer's outputs on such inputs move as little as possible. The layout and
kernel are those of round to nearest (int8 per row, scale = max |w| / 127): only the integers
differ, and so does nothing at serving time. Each output row is rounded independently, so a
fused q|k|v or gate|up weight gets exactly the rows of its parts rounded one by one.

Calibration texts: docstrings and source of Python's standard library (prose and code), raw and
in the model's chat template: on every machine, nothing downloaded, and none of the held texts
that `radixflow bench quant` measures quality on. H comes from transformers' model of the
checkpoint in float32 (every layer's inputs unquantized). The result is built once per checkpoint
and cached (runtime/disk_cache.py):
    gptq/{checkpoint dir}-{xxh3 of the weight files' names, sizes and mtimes, the calibration
    ids, GPTQ_VERSION and the head flag}/int8.safetensors
        "{checkpoint module}.q": int8 [out, in], "{checkpoint module}.scale": float32 [out]
    (module names as in the checkpoint: model.layers.0.self_attn.q_proj, ..., lm_head)
"""

from __future__ import annotations

import inspect
import logging
import pydoc
from pathlib import Path

import torch
import xxhash
from torch import nn

from runtime.disk_cache import build_cached

logger = logging.getLogger(__name__)

GPTQ_VERSION = "v1"
CALIBRATION_MODULES = ("argparse", "collections", "csv", "dataclasses", "datetime", "email.message", "functools",
                       "heapq", "http.client", "json", "logging", "pathlib", "re", "sqlite3", "statistics",
                       "string", "subprocess", "textwrap", "typing", "unittest", "urllib.parse", "zipfile")
CALIBRATION_TOKENS = 8192  # ~1.5 min to calibrate and round the default model on 2 cores
CHUNK_TOKENS = 256
BLOCK = 128  # columns rounded between two updates of the rest of the weight
DAMP = 0.01  # H + DAMP * mean(diag H) * I: keeps the inverse finite for rarely-used inputs


@torch.no_grad()
def gptq_round(weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in], hessian [in, in] (sum of x x^T over calibration inputs) ->
    q int8 [out, in] in [-127, 127] and scale float32 [out], w ~ q * scale[:, None]."""
    w = weight.detach().float().clone()
    h = hessian.double().clone()
    cols = w.shape[1]
    unused = torch.diag(h) == 0  # inputs never seen: no error to compensate through them
    h[unused, unused] = 1
    h += DAMP * torch.diag(h).mean() * torch.eye(cols, dtype=h.dtype)
    # upper Cholesky factor of H^-1: row i holds how column i's error spreads onto columns > i
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
    q = torch.empty_like(w, dtype=torch.int8)
    for start in range(0, cols, BLOCK):
        end = min(start + BLOCK, cols)
        block, errors, hb = w[:, start:end], torch.empty(w.shape[0], end - start), hinv[start:end, start:end]
        for i in range(end - start):
            rounded = torch.round(block[:, i] / scale).clamp_(-127, 127)
            q[:, start + i] = rounded.to(torch.int8)
            err = (block[:, i] - rounded * scale) / hb[i, i]
            block[:, i:] -= err[:, None] * hb[i, i:][None, :]
            errors[:, i] = err
        w[:, end:] -= errors @ hinv[start:end, end:]
    return q, scale


def calibration_texts(tokenizer) -> list[list[int]]:
    """Token id lists of up to CHUNK_TOKENS, CALIBRATION_TOKENS in all, taken in turn from
    the modules' docs and sources (the first chunk of each, then the second, ...); every
    other one as a chat turn."""
    import importlib

    streams = []  # per module: its docs, its source; each a list of chunks
    for name in CALIBRATION_MODULES:
        module = importlib.import_module(name)
        members = [obj for attr, obj in sorted(vars(module).items())
                   if not attr.startswith("_") and getattr(obj, "__module__", None) == name]
        docs = "\n\n".join(doc for doc in map(pydoc.getdoc, [module, *members]) if doc)
        for text in (docs, inspect.getsource(module)):
            ids = tokenizer.encode(text[:8 * CHUNK_TOKENS], add_special_tokens=False)  # ~2 chunks' worth
            streams.append([ids[i:i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)])
    texts, total = [], 0
    for turn in range(max(map(len, streams))):
        for chunks in streams:
            if total >= CALIBRATION_TOKENS:
                return texts
            if turn >= len(chunks):
                continue
            chunk = chunks[turn]
            if len(texts) % 2 and getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template([{"role": "user", "content": tokenizer.decode(chunk)}],
                                                     add_generation_prompt=True, tokenize=False)
                chunk = tokenizer.encode(text, add_special_tokens=False)[:CHUNK_TOKENS]
            texts.append(chunk)
            total += len(chunk)
    return texts


@torch.inference_mode()
def input_hessians(model: nn.Module, texts: list[list[int]], names: list[str]) -> dict[str, torch.Tensor]:
    """name -> sum over calibration tokens of x x^T [in, in] for the input x of each named
    nn.Linear of `model` (a transformers causal LM)."""
    sums: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def hook(name):
        def add(_module, inputs, _output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
        return add

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    try:
        for ids in texts:
            model(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return sums


def gptq_int8_weights(checkpoint: str, include_head: bool) -> dict[str, torch.Tensor]:
    """The checkpoint's decoder linears (and the output head if include_head) rounded by
    GPTQ: "{module}.q" and "{module}.scale" per checkpoint module name; built once, cached."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = calibration_texts(tokenizer)
    key = xxhash.xxh3_128()
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        stat = path.stat()
        key.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    key.update(repr((texts, GPTQ_VERSION, include_head)).encode())
    name = f"{Path(checkpoint).resolve().name}-{key.hexdigest()}"
    folder = build_cached("gptq", name, lambda tmp: _build(checkpoint, texts, include_head, tmp))
    return load_file(str(folder / "int8.safetensors"))


def _build(checkpoint: str, texts: list[list[int]], include_head: bool, out: Path) -> None:
    import time

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    names = [n for n, m in model.model.layers.named_modules(prefix="model.layers") if isinstance(m, nn.Linear)]
    names += ["lm_head"] if include_head else []
    hessians = input_hessians(model, texts, names)
    modules = dict(model.named_modules())
    tensors = {}
    for name in names:
        tensors[f"{name}.q"], tensors[f"{name}.scale"] = gptq_round(modules[name].weight, hessians.pop(name))
    save_file(tensors, str(out / "int8.safetensors"))
    logger.info("GPTQ int8: %d layers of %s rounded over %d calibration tokens in %.0f s", len(names), checkpoint,
                sum(map(len, texts)), time.perf_counter() - start)
