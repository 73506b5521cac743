"""GGUF checkpoints (llama.cpp's format): converted once into a Hugging Face-style
checkpoint directory that the safetensors loader, the tokenizer and the chat template
code read as they read any other.

`--model-path` may name a `.gguf` file or a directory holding exactly one (and no
config.json). The converted directory is cached under
    ${RADIXFLOW_CACHE_DIR:-~/.cache/radixflow}/gguf/{file stem}-{xxh3-128 of the file}-{CONVERTER_VERSION}/
with config.json (from `{arch}.*` metadata), generation_config.json (EOS ids),
model.safetensors, tokenizer.json + tokenizer_config.json (`gguf_tokenizer`) and
source.json (what was converted, from which types).

Weights are dequantized with the `gguf` package to float32, which holds every value of
the supported types exactly; the engine then casts to the serving dtype (config.json's
`torch_dtype` is bfloat16, the default). GGUF lists dims innermost first, so a numpy
view of a tensor is already in torch's [out_features, in_features] order. llama.cpp's
converter reorders the rows of Llama's q/k projections (per head, rotary pairs
interleaved instead of split in halves); `unpermute_qk` undoes it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import xxhash

from runtime.disk_cache import build_cached
from runtime.models.gguf_tokenizer import build_tokenizer, tokenizer_config

logger = logging.getLogger("radixflow")

CACHE_FOLDER = "gguf"
CONVERTER_VERSION = "v1"  # bump when the converted files change

# general.architecture -> (HF architecture, whether llama.cpp permuted the q/k rows)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", True),
    "qwen2": ("Qwen2ForCausalLM", False),
    "qwen3": ("Qwen3ForCausalLM", False),
}
# blk.{i}.{gguf name} -> model.layers.{i}.{HF name}
LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def supported_tensor_types() -> dict[str, int]:
    """GGML type name -> id, for the types we dequantize (all tested against transformers')."""
    from gguf import GGMLQuantizationType as T

    types = (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
    return {t.name: int(t) for t in types}


def find_gguf_file(model_path: str | Path) -> Path | None:
    """The GGUF file `model_path` names (the file itself, or a directory holding exactly
    one and no config.json); None when it is not a GGUF checkpoint."""
    path = Path(model_path)
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    files = sorted(path.glob("*.gguf"))
    if len(files) > 1:
        raise ValueError(f"{path} holds several GGUF files ({', '.join(f.name for f in files)}); "
                         f"pass one of them as the model path")
    return files[0] if files else None


def file_digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def convert_gguf(gguf_file: str | Path) -> Path:
    """The cached HF-style checkpoint directory for `gguf_file`, converted on first use."""
    gguf_file = Path(gguf_file).resolve()
    name = f"{gguf_file.stem}-{file_digest(gguf_file)[:16]}-{CONVERTER_VERSION}"

    def build(out: Path) -> None:
        start = time.time()
        logger.info("converting GGUF %s to a safetensors checkpoint (done once, cached)", gguf_file)
        source = write_hf_checkpoint(gguf_file, out)
        logger.info("converted %d tensors (%s) in %.1f s into %s", source["num_tensors"],
                    ", ".join(f"{n} {t}" for t, n in source["tensor_types"].items()), time.time() - start,
                    Path(out).parent / name)

    path = build_cached(CACHE_FOLDER, name, build)
    logger.info("GGUF %s: using the converted checkpoint %s", gguf_file, path)
    return path


def read_metadata(reader) -> dict:
    """GGUF key/value metadata with values decoded (strings, numbers, lists)."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def write_hf_checkpoint(gguf_file: Path, out: Path) -> dict:
    """Convert `gguf_file` into `out`; returns what source.json records."""
    import gguf
    from safetensors.torch import save_file

    reader = gguf.GGUFReader(str(gguf_file))
    meta = read_metadata(reader)
    config = hf_config(meta, {t.name for t in reader.tensors})
    arch = meta["general.architecture"]
    permuted = ARCHITECTURES[arch][1]
    tensors, type_counts = {}, {}
    for t in reader.tensors:
        name = hf_tensor_name(t.name)
        weight = dequantize(t)
        if permuted and name.endswith(("q_proj.weight", "q_proj.bias")):
            weight = unpermute_qk(weight, config["num_attention_heads"])
        elif permuted and name.endswith(("k_proj.weight", "k_proj.bias")):
            weight = unpermute_qk(weight, config["num_key_value_heads"])
        tensors[name] = weight
        type_counts[t.tensor_type.name] = type_counts.get(t.tensor_type.name, 0) + 1
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json",
                {"bos_token_id": config.get("bos_token_id"), "eos_token_id": config["eos_token_id"]})
    build_tokenizer(meta).save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", tokenizer_config(meta, config["max_position_embeddings"]))
    source = {"gguf_file": str(gguf_file), "name": meta.get("general.name"), "architecture": arch,
              "num_tensors": len(tensors), "tensor_types": type_counts, "converter": CONVERTER_VERSION}
    _write_json(out / "source.json", source)
    return source


def hf_config(meta: dict, tensor_names: set[str]) -> dict:
    """config.json for the model `meta` describes (raises for unsupported models)."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {sorted(ARCHITECTURES)}")
    if "rope_freqs.weight" in tensor_names:
        raise ValueError("GGUF with a rope_freqs tensor (Llama-3.1-style rope scaling) is not supported yet")

    def get(key: str, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden, num_heads = get("embedding_length"), get("attention.head_count")
    rope_scaling = None
    scaling_type = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling_type == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif scaling_type != "none":
        raise ValueError(f"GGUF rope scaling {scaling_type!r} is not supported (supported: none, linear)")
    eos = [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta]
    config = {
        "architectures": [ARCHITECTURES[arch][0]],
        "model_type": arch,
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": get("attention.head_count_kv", num_heads),
        "head_dim": get("attention.key_length", hidden // num_heads),
        "intermediate_size": get("feed_forward_length"),
        "vocab_size": get("vocab_size", len(meta["tokenizer.ggml.tokens"])),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": get("context_length"),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "torch_dtype": "bfloat16",
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": list(dict.fromkeys(eos)) if len(set(eos)) > 1 else (eos[0] if eos else None),
    }
    return config


def hf_tensor_name(gguf_name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[parts[0]]}.{parts[1]}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no counterpart in the supported models")


def dequantize(tensor) -> torch.Tensor:
    """One `gguf.ReaderTensor` -> float32 torch tensor in torch's dim order."""
    import gguf

    supported = supported_tensor_types()
    qtype = tensor.tensor_type
    if int(qtype) not in supported.values():
        raise ValueError(f"GGUF tensor {tensor.name}: type {qtype.name} is not supported; "
                         f"supported: {', '.join(supported)}")
    values = gguf.quants.dequantize(tensor.data, qtype)
    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists the innermost dim first
    return torch.from_numpy(np.array(values, dtype=np.float32)).reshape(shape)  # a copy: the file is mapped read-only


def unpermute_qk(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rows of a q/k projection (weight [H*D, in] or bias [H*D]) from llama.cpp's order
    (per head: rotary pairs side by side, (D/2, 2)) back to HF's ((2, D/2): halves)."""
    rest = weight.shape[1:]
    head_dim = weight.shape[0] // num_heads
    return weight.reshape(num_heads, head_dim // 2, 2, *rest).transpose(1, 2).reshape(weight.shape).contiguous()


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
