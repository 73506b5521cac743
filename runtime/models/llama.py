"""Llama-family decoder (Llama, Mistral, Qwen2, Qwen3 differ only in flags).

Module and parameter names mirror the Hugging Face checkpoint keys; fused weights
(q|k|v and gate|up) are declared in `packed_modules_mapping` for the loader.
All token tensors are flattened across the batch: [T, ...].
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from runtime.config import ModelConfig
from runtime.layers.activation import silu_and_mul
from runtime.layers.attention import AttentionBackend
from runtime.layers.linear import MergedLinear, OneDNNLinear, pack_linears_onednn
from runtime.layers.norm import RMSNorm
from runtime.layers.parallel import SINGLE, TensorParallel, VocabParallelEmbedding
from runtime.layers.quant import quantize_decoder, rounded_int8
from runtime.layers.rotary import RotaryEmbedding, apply_rotary


class LlamaAttention(nn.Module):
    """This rank's heads (all of them without tensor parallelism); o_proj's partial sums
    are added across ranks."""

    def __init__(self, cfg: ModelConfig, layer_id: int, qkv_bias: bool, qk_norm: bool, tp: TensorParallel) -> None:
        super().__init__()
        self.layer_id, self.tp = layer_id, tp
        self.num_heads = tp.split(cfg.num_heads, "attention heads")
        self.num_kv_heads = tp.split(cfg.num_kv_heads, "KV heads")
        self.head_dim = cfg.head_dim
        q_size, kv_size = self.num_heads * cfg.head_dim, self.num_kv_heads * cfg.head_dim
        self.qkv_proj = MergedLinear(cfg.hidden_size, {"q": q_size, "k": kv_size, "v": kv_size}, bias=qkv_bias)
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if qk_norm else None
        self.split = (q_size, kv_size, kv_size)

    def forward(self, rope, hidden, fb, attn: AttentionBackend):
        """rope: x [T, heads, D] -> x rotated at the step's positions; hidden: [T, hidden]."""
        qkv = self.qkv_proj(hidden)  # [T, (H + 2 Hkv) D]
        tokens, h, hkv, d = qkv.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        q_and_k, v = qkv.split((self.split[0] + self.split[1], self.split[2]), dim=-1)
        v = v.view(tokens, hkv, d)  # [T, Hkv, D]
        if self.q_norm is None:  # q and k rotate together: one set of element-wise ops
            q_and_k = rope(q_and_k.view(tokens, h + hkv, d))
        else:
            q, k = q_and_k.split(self.split[:2], dim=-1)
            q_and_k = rope(torch.cat((self.q_norm(q.view(tokens, h, d)), self.k_norm(k.view(tokens, hkv, d))), dim=1))
        q, k = q_and_k[:, :h], q_and_k[:, h:]  # [T, H, D], [T, Hkv, D] (views)
        return self.tp.all_reduce(self.o_proj(attn.forward(q, k, v, self.layer_id, fb)))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        size = tp.split(cfg.intermediate_size, "MLP columns (intermediate_size)")
        self.gate_up_proj = MergedLinear(cfg.hidden_size, {"gate": size, "up": size}, bias=False)
        self.down_proj = nn.Linear(size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.tp.all_reduce(self.down_proj(silu_and_mul(self.gate_up_proj(x))))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, qkv_bias: bool, qk_norm: bool, tp: TensorParallel) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_id, qkv_bias, qk_norm, tp)
        self.mlp = LlamaMLP(cfg, tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, rope, hidden, fb, attn):
        hidden = hidden + self.self_attn(rope, self.input_layernorm(hidden), fb, attn)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))

    def forward_fused(self, ops, rope, hidden, residual, fb, attn):
        """The same layer on fused element-wise kernels (`ops`: their module): `hidden` is the
        previous layer's MLP output and `residual` the stream before it (None at the first
        layer, where hidden is the embedding); each residual add happens inside the next norm.
        -> (mlp output, residual)."""
        norm1, norm2 = self.input_layernorm, self.post_attention_layernorm
        if residual is None:
            normed, residual = ops.add_rmsnorm(hidden, norm1.weight, norm1.eps), hidden
        else:
            normed, residual = ops.add_rmsnorm(hidden, norm1.weight, norm1.eps, residual)
        attended = self.self_attn(rope, normed, fb, attn)
        normed, residual = ops.add_rmsnorm(attended, norm2.weight, norm2.eps, residual)
        return self.mlp(normed), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, qkv_bias: bool, qk_norm: bool, tp: TensorParallel) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size) if tp.size == 1 else \
            VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(cfg, i, qkv_bias, qk_norm, tp) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    # checkpoint shard name -> (fused module name, shard id)
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", "gate"), "up_proj": ("gate_up_proj", "up"),
    }
    qk_norm = False
    # tensor parallelism: modules whose weight is split along its input dim (row-parallel),
    # and those split by vocabulary rows; fused modules split each shard's rows; the rest is replicated
    row_parallel_modules = ("o_proj", "down_proj")
    vocab_parallel_modules = ("embed_tokens", "lm_head")

    def __init__(self, cfg: ModelConfig, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.config, self.tp = cfg, tp
        self.model = LlamaModel(cfg, qkv_bias=self.qkv_bias(cfg), qk_norm=self.qk_norm, tp=tp)
        head_rows = tp.vocab_rows(cfg.vocab_size)[1]
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, head_rows, bias=False)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        # the element-wise ops (add+RMSNorm, rotary in place) fused: a module with add_rmsnorm and
        # rotary_ (runtime/kernels/elementwise.py: Triton, on CUDA; cpu_elementwise.py: C++, on
        # CPU), or None for the eager torch ops (set by the model runner)
        self.elementwise = None

    @staticmethod
    def qkv_bias(cfg: ModelConfig) -> bool:
        return cfg.attention_bias

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fb, attn: AttentionBackend):
        """input_ids, positions: [T] -> final hidden states [T, hidden] (before lm_head)."""
        hidden = self.model.embed_tokens(input_ids)
        if self.elementwise is not None:
            return self._forward_fused(hidden, positions, fb, attn)
        cos, sin = self.rotary.cos_sin(positions)
        rope = functools.partial(apply_rotary, cos=cos, sin=sin)
        for layer in self.model.layers:
            hidden = layer(rope, hidden, fb, attn)
        return self.model.norm(hidden)

    def _forward_fused(self, hidden, positions, fb, attn):
        ops = self.elementwise
        rope = functools.partial(ops.rotary_, cos_table=self.rotary.cos, sin_table=self.rotary.sin, positions=positions)
        residual = None
        for layer in self.model.layers:
            hidden, residual = layer.forward_fused(ops, rope, hidden, residual, fb, attn)
        norm = self.model.norm
        return ops.add_rmsnorm(hidden, norm.weight, norm.eps, residual)[0]

    def compute_logits(self, hidden: torch.Tensor, float32: bool = True) -> torch.Tensor:
        """hidden: [N, hidden] -> logits [N, vocab_size], float32 unless float32=False
        (then the model dtype: enough for an argmax, as the fp32 cast is exact). With tensor
        parallelism each rank computes its vocabulary slice and every rank gets all of them."""
        logits = F.linear(hidden, self.model.embed_tokens.weight) if self.lm_head is None else self.lm_head(hidden)
        logits = self.tp.gather_vocab(logits, self.config.vocab_size)
        return logits.float() if float32 else logits

    def quantize(self, method: str, group_size: int, lm_head_method: str = "none",
                 rounded_int8: dict[str, torch.Tensor] | None = None) -> int:
        """Weight-only quantization of every linear layer of the decoder layers (`method`)
        and of the output head (`lm_head_method`; for tied embeddings a quantized copy of
        the table, the lookup keeps reading the float table). int8 layers take their
        integers from `rounded_int8` where given (GPTQ: "{checkpoint module}.q" / ".scale",
        runtime/layers/gptq.py), else round to nearest. Returns how many layers."""
        head = self.lm_head if self.lm_head is not None else self.model.embed_tokens
        lookup = None if rounded_int8 is None else functools.partial(self._rounded_int8, rounded_int8)
        count, quantized_head = quantize_decoder(self.model.layers, head, method, group_size, lm_head_method, lookup)
        if quantized_head is not None:
            self.lm_head = quantized_head
        return count

    def _rounded_int8(self, tensors: dict[str, torch.Tensor], name: str):
        """Module `name`'s (q, scale) from checkpoint-named tensors: a fused module (q|k|v,
        gate|up) stacks its checkpoint modules' rows in its own shard order; None if absent."""
        parent, _, leaf = name.rpartition(".")
        shards = {shard: f"{parent}.{ckpt}" for ckpt, (fused, shard) in self.packed_modules_mapping.items()
                  if fused == leaf}
        offsets = self.get_submodule(name).shard_offsets if shards else {}
        names = [shards[s] for s in sorted(shards, key=offsets.__getitem__)] if shards else [name]
        parts = [rounded_int8(tensors, n) for n in names]
        if None in parts:
            return None
        return torch.cat([q for q, _ in parts]), torch.cat([scale for _, scale in parts])

    def pack_for_onednn(self) -> int:
        """CPU bf16: every linear layer, and the output head (for tied embeddings a reordered
        copy of the embedding beside the table the lookup reads), in oneDNN's layout."""
        tied = self.lm_head is None
        if tied:
            self.lm_head = OneDNNLinear(self.model.embed_tokens.weight, None)
        return pack_linears_onednn(self) + tied  # layers reordered, the tied head included


class MistralForCausalLM(LlamaForCausalLM):
    pass
