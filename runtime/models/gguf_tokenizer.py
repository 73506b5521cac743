"""A GGUF file's tokenizer metadata -> Hugging Face `tokenizer.json` + `tokenizer_config.json`.

GGUF keeps the vocabulary as metadata under llama.cpp's keys: `tokenizer.ggml.model`
(the algorithm: "gpt2" is byte-level BPE), `.pre` (which pre-tokenizer split the merges
were learned with), `.tokens` (already in byte-level unicode form), `.merges` ("a b"),
`.token_type` (1 normal, 3 control, 4 user-defined), the special-token ids and
`tokenizer.chat_template`. Only byte-level BPE is supported; each known `.pre` maps to
the split its model's own tokenizer.json uses (SmolLM: every digit alone, then GPT-2's
regex), so our token ids match the original model's, not only llama.cpp's.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from runtime.demo.tokenizer import PRETOKENIZE_REGEX as QWEN2_SPLIT

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4


def _split(regex: str) -> list:
    return [pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]


# tokenizer.ggml.pre -> (normalizer or None, pre-tokenizer steps)
PRE_TOKENIZERS = {
    "default": (None, [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "gpt2": (None, [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "smollm": (None, [pre_tokenizers.Digits(individual_digits=True),
                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "qwen2": (normalizers.NFC(), _split(QWEN2_SPLIT)),
    "llama-bpe": (None, _split(LLAMA3_SPLIT)),
    "llama3": (None, _split(LLAMA3_SPLIT)),
}


def build_tokenizer(meta: dict) -> Tokenizer:
    """The `tokenizers.Tokenizer` that `meta` (GGUF metadata, values decoded) describes."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported; supported: 'gpt2' (byte-level BPE)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported; supported: {sorted(PRE_TOKENIZERS)}")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, dropout=None, unk_token=None,
                        continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    normalizer, steps = PRE_TOKENIZERS[pre]
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos_id is not None:
        bos = tokens[bos_id]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    added = [AddedToken(tokens[i], special=t == TOKEN_TYPE_CONTROL, normalized=False)
             for i, t in enumerate(types) if t in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]
    tok.add_tokens(added)  # tokens already in the vocabulary keep their ids
    return tok


def tokenizer_config(meta: dict, context_length: int) -> dict:
    """tokenizer_config.json: special tokens by name, the chat template, BOS behaviour."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or []

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    added = {str(i): {"content": tokens[i], "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": t == TOKEN_TYPE_CONTROL}
             for i, t in enumerate(types) if t in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_length,
    }
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config
