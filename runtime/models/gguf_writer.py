"""Writing a checkpoint as GGUF the way llama.cpp's converter lays it out (`gguf.GGUFWriter`),
so llama.cpp can serve the same weights (`radixflow bench compare --model demo-small`)
and tests can check our GGUF loader against a file they made. Llama's q/k rows are
permuted as llama.cpp's `LlamaModel.permute` does (per head, the two rotary halves
interleaved), so a loader that forgets to undo it produces different tokens."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file

from runtime.models.gguf_loader import ARCHITECTURES, GLOBAL_TENSORS, LAYER_TENSORS

# the loader's name tables, read the other way
HF_TO_GGUF_LAYER = {hf: name for name, hf in LAYER_TENSORS.items()}
HF_TO_GGUF_GLOBAL = {hf: name for name, hf in GLOBAL_TENSORS.items()}
GGUF_ARCH = {hf: name for name, (hf, _) in ARCHITECTURES.items()}


def llama_cpp_permute(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf: HF's (2, D/2) row order per head -> (D/2, 2)."""
    return w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    module, param = hf_name.rsplit(".", 1)
    if module in HF_TO_GGUF_GLOBAL:
        return f"{HF_TO_GGUF_GLOBAL[module]}.{param}"
    _, _, layer, rest = module.split(".", 3)  # model.layers.{i}.{rest}
    return f"blk.{layer}.{HF_TO_GGUF_LAYER[rest]}.{param}"


def write_gguf_from_checkpoint(ckpt: Path, out_file: Path, qtype=gguf.GGMLQuantizationType.F32) -> Path:
    """`ckpt` (a Llama/Qwen2/Qwen3 checkpoint dir with one model.safetensors and a
    byte-level BPE tokenizer.json) as a GGUF file; 2-D weights stored as `qtype`
    (F32/F16/BF16 or a type `gguf.quants.quantize` supports), 1-D ones as F32."""
    cfg = json.loads((ckpt / "config.json").read_text())
    arch = GGUF_ARCH[cfg["architectures"][0]]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    writer = gguf.GGUFWriter(str(out_file), arch)
    writer.add_name(ckpt.name)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    _add_tokenizer(writer, ckpt, cfg["vocab_size"])
    for name, tensor in load_file(str(ckpt / "model.safetensors")).items():
        if cfg.get("tie_word_embeddings") and name == "lm_head.weight":
            continue
        w = tensor.to(torch.float32).numpy()
        if arch == "llama" and ".q_proj." in name:
            w = llama_cpp_permute(w, heads)
        elif arch == "llama" and ".k_proj." in name:
            w = llama_cpp_permute(w, kv_heads)
        _add_tensor(writer, gguf_name(name), w, qtype if w.ndim == 2 else gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def _add_tensor(writer, name: str, w: np.ndarray, qtype) -> None:
    T = gguf.GGMLQuantizationType
    if qtype == T.F32:
        writer.add_tensor(name, np.ascontiguousarray(w, dtype=np.float32))
    elif qtype == T.F16:
        writer.add_tensor(name, w.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)


def _add_tokenizer(writer, ckpt: Path, vocab_size: int) -> None:
    """Byte-level BPE metadata from the checkpoint's tokenizer.json (Qwen2.5's pre-tokenizer)."""
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    types = {i: gguf.TokenType.NORMAL for i in vocab.values()}
    for added in tok["added_tokens"]:
        vocab[added["content"]] = added["id"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # the model's embedding rows past the tokenizer
    kinds = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in vocab.items():
        tokens[i], kinds[i] = text, types[i]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_eos_token_id(vocab[tok_cfg["eos_token"]])
    writer.add_pad_token_id(vocab[tok_cfg["pad_token"]])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tok_cfg["chat_template"])
