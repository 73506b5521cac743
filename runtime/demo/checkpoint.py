"""Seeded random-weight HF checkpoints for tests and demos (no model hub needed).

`write_demo_checkpoint` builds the model with transformers' own classes and
`save_pretrained` (config.json, model.safetensors, generation_config.json) plus the
real Qwen2.5 tokenizer files from `runtime.demo.tokenizer`. `demo_model_path` caches
one directory per (arch, size, dtype) under
    ${RADIXFLOW_CACHE_DIR:-~/.cache/radixflow}/demo-models/{arch}-{size}-{dtype}-{CACHE_VERSION}/
and is safe under concurrent callers (`runtime.disk_cache.build_cached`).

Note (transformers 5.x): rope settings live in config.json under "rope_parameters"
(e.g. {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, ...}), and the
dtype under "dtype" (older files used "rope_scaling"/"rope_theta"/"torch_dtype").

Init rescaling (after HF's default N(0, 0.02) init), so random models behave usefully:
  * final RMSNorm weight set so logits have std ~= LOGIT_STD (5): argmax unchanged, but
    absolute top-2 gaps become large compared with fp32 rounding noise.
  * attention sharpened so q.k/sqrt(d) has std ~= ATTN_SCORE_STD[arch] (2.5-3): with HF's
    tiny init attention is almost uniform, greedy output falls into 1-2 token loops and
    positions barely matter; sharp, RoPE-dependent attention gives diverse greedy text
    that depends on context and positions (so KV-cache/position bugs change tokens).
    Sharper still (v2 used 4 with logits std 10) made the net so chaotic that fp32
    itself was 1.2-1.6e-4 off fp64 in logprob, above the 1e-4 parity tolerance.
  * all RMSNorm weights jittered by ~10% and Qwen2 q/k/v biases random (HF leaves them
    at 1 / 0, which would hide loader bugs).
Measured (v3, tiny, fp32) on 9 random prompts of 64-300 tokens, every position, guarded
by tests/unit/test_demo_tokenizer.py::test_demo_logits_are_peaked:
    top-2 logit gap: median 0.75-0.8, P(gap < 1e-2) = 0.7-1%;
    fp32 vs fp64 logprob of the argmax: <= 4e-5 (llama/mistral), <= 6.5e-5 (qwen2/qwen3);
    greedy 48-token continuations of 4 prompts have 42-48 distinct tokens
    (llama/mistral), 23-27 (qwen2), 9-27 (qwen3).
Caveat: such a random net is chaotic, so bf16/fp16 runs diverge from fp32 (and from
each other across kernels) after a few to tens of tokens (bf16 vs fp32 teacher-forced
argmax agreement ~87-90% per position); exact token parity tests should use float32,
half precision should compare logits with a tolerance.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from runtime.disk_cache import build_cached

ARCHS = ("llama", "qwen2", "qwen3", "mistral")
SIZES = ("tiny", "small")
DTYPES = ("float32", "bfloat16", "float16")
CACHE_FOLDER = "demo-models"
CACHE_VERSION = "v3"  # bump when the produced weights/config change (v2: logits std 10, scores std 4)

BOS_ID = 151643  # <|endoftext|>
EOS_ID = 151645  # <|im_end|>
GENERATION_EOS_IDS = [151645, 151643]

LOGIT_STD = 5.0
# Sharper attention makes greedy text more diverse but the net more chaotic (fp32 rounding
# is amplified more); Qwen2/3 need more sharpness than Llama/Mistral to avoid loops.
ATTN_SCORE_STD = {"llama": 2.5, "mistral": 2.5, "qwen2": 3.0, "qwen3": 3.0}
# Qwen2 q/k/v bias std relative to the projection output's std. k bias matters (RoPE
# rotates it per position); large q/v biases make attention query-independent or add a
# constant offset that swamps the residual, and greedy output collapses into loops.
BIAS_REL_STD = {"q_proj": 0.2, "k_proj": 1.0, "v_proj": 0.1}

INIT_STD = 0.02

_SHAPES = {
    # hidden, layers, heads, kv_heads, head_dim, intermediate, max_positions
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=512,
        max_position_embeddings=4096,
    ),
    # Qwen2.5-0.5B shape.
    "small": dict(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=4864,
        max_position_embeddings=32768,
    ),
}


def _rope_kwargs(rope: dict) -> dict:
    """Config kwargs for rope settings: transformers 5 takes one `rope_parameters` dict;
    4.x takes `rope_theta` plus an optional `rope_scaling` dict."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"rope_parameters": dict(rope)}
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    return {"rope_theta": rope["rope_theta"], "rope_scaling": scaling if scaling["rope_type"] != "default" else None}


def make_config(arch: str = "qwen2", size: str = "tiny", dtype: str = "float32"):
    """The transformers config object for a demo model."""
    import transformers

    if arch not in ARCHS or size not in SIZES or dtype not in DTYPES:
        raise ValueError(f"unknown demo model {arch}-{size}-{dtype}")
    v5 = int(transformers.__version__.split(".")[0]) >= 5
    common = dict(
        vocab_size=151936,  # Qwen's padded vocab; tokenizer ids stop at 151664
        rms_norm_eps=1e-6,
        hidden_act="silu",
        initializer_range=INIT_STD,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        **{"dtype" if v5 else "torch_dtype": dtype},
        **_SHAPES[size],
    )
    if arch == "llama":
        llama3_rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
        return transformers.LlamaConfig(
            tie_word_embeddings=False, attention_bias=False, mlp_bias=False, **_rope_kwargs(llama3_rope), **common
        )
    rope = _rope_kwargs({"rope_type": "default", "rope_theta": 1000000.0})
    if arch == "mistral":
        return transformers.MistralConfig(tie_word_embeddings=False, sliding_window=None, **rope, **common)
    if arch == "qwen2":
        # Qwen2 always has q/k/v bias; head_dim is implied (hidden / heads == 64).
        common.pop("head_dim")
        return transformers.Qwen2Config(
            tie_word_embeddings=True, use_sliding_window=False, sliding_window=None, **rope, **common
        )
    # qwen3: q/k RMSNorm, explicit head_dim, no bias
    return transformers.Qwen3Config(
        tie_word_embeddings=True, attention_bias=False, use_sliding_window=False, sliding_window=None, **rope, **common
    )


def _rescale_init(model, config, arch: str, seed: int) -> None:
    """Peaked logits, sharp attention, non-trivial norms/biases (see module docstring).

    In place, float32. Norm weights get a ~10% random jitter and Qwen2's q/k/v biases are
    random (HF inits them to 1 and 0), so a loader that drops them changes the tokens.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 1)

    def jitter(w: torch.Tensor, scale: float) -> None:  # w <- scale * (1 + 0.1 * N(0, 1))
        w.copy_(scale * (1.0 + 0.1 * torch.randn(w.shape, generator=gen)))

    hidden = config.hidden_size
    proj_std = INIT_STD * math.sqrt(hidden)  # std of x @ W^T entries for unit-RMS x
    with torch.no_grad():
        # logits = (g * rmsnorm(h)) @ W_lm^T, W_lm ~ N(0, INIT_STD^2): std = g * proj_std
        jitter(model.model.norm.weight, LOGIT_STD / proj_std)
        for layer in model.model.layers:
            jitter(layer.input_layernorm.weight, 1.0)
            jitter(layer.post_attention_layernorm.weight, 1.0)
            attn = layer.self_attn
            if hasattr(attn, "q_norm"):
                # qwen3: q, k are RMS-normalized per head (entries ~ unit std), so with
                # norm weight g the score q.k / sqrt(head_dim) has std g^2.
                g = math.sqrt(ATTN_SCORE_STD[arch])
                jitter(attn.q_norm.weight, g)
                jitter(attn.k_norm.weight, g)
                continue
            # q, k entries ~ N(0, proj_std^2) -> scaled by s: score std = (proj_std * s)^2.
            s = math.sqrt(ATTN_SCORE_STD[arch]) / proj_std
            for name, scale in (("q_proj", s), ("k_proj", s), ("v_proj", 1.0)):
                proj = getattr(attn, name)
                proj.weight.mul_(scale)
                if proj.bias is not None:
                    std = proj_std * scale * BIAS_REL_STD[name]
                    proj.bias.copy_(torch.randn(proj.bias.shape, generator=gen) * std)


def build_demo_model(arch: str = "qwen2", size: str = "tiny", dtype: str = "float32", seed: int = 0):
    """Seeded random model (eval mode). Weights are drawn in float32, then cast in
    place, so every dtype of one (arch, size, seed) is a rounding of the same weights."""
    import torch
    import transformers

    config = make_config(arch, size, dtype)
    cls = {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "qwen3": transformers.Qwen3ForCausalLM,
        "mistral": transformers.MistralForCausalLM,
    }[arch]
    torch.manual_seed(seed)
    model = cls(config).float()  # drawn in float32 (no-op unless the default dtype differs)
    _rescale_init(model, config, arch, seed)
    model.to(getattr(torch, dtype))  # converts parameter by parameter
    return model.eval()


def write_demo_checkpoint(
    out_dir: str | Path,
    arch: str = "qwen2",
    size: str = "tiny",
    dtype: str = "float32",
    seed: int = 0,
) -> None:
    """Write config.json, model.safetensors, generation_config.json, tokenizer files."""
    import transformers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_demo_model(arch, size, dtype, seed)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=list(GENERATION_EOS_IDS), pad_token_id=BOS_ID
    )
    progress_bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model.save_pretrained(out)  # transformers 5.x always writes safetensors
    finally:
        if progress_bars:
            transformers.utils.logging.enable_progress_bar()
    del model
    if not (out / "model.safetensors").exists():
        raise RuntimeError(f"save_pretrained wrote no model.safetensors in {out}")
    # transformers 5 writes "dtype"; also record the pre-5.x "torch_dtype" key for loaders
    # that only know that name (transformers itself accepts both).
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("torch_dtype", dtype)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    _copy_tokenizer_files(out)
    meta = {"arch": arch, "size": size, "dtype": dtype, "seed": seed, "version": CACHE_VERSION}
    (out / "radixflow_demo.json").write_text(json.dumps(meta, indent=2) + "\n")


# -- caching -----------------------------------------------------------------------


def qwen_tokenizer_path() -> Path:
    """Cached directory with the converted Qwen2.5 tokenizer.json + tokenizer_config.json."""
    from runtime.demo.tokenizer import write_qwen_tokenizer

    return build_cached(CACHE_FOLDER, f"tokenizer-qwen2.5-{CACHE_VERSION}", write_qwen_tokenizer)


def _copy_tokenizer_files(out: Path) -> None:
    src = qwen_tokenizer_path()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(src / name, out / name)


def demo_model_path(arch: str = "qwen2", size: str = "tiny", dtype: str = "float32") -> Path:
    """Path of the cached demo checkpoint (seed 0), built on first use."""
    make_config(arch, size, dtype)  # validate arguments before touching the cache
    name = f"{arch}-{size}-{dtype}-{CACHE_VERSION}"
    return build_cached(CACHE_FOLDER, name, lambda tmp: write_demo_checkpoint(tmp, arch, size, dtype, seed=0))
