"""GPTQ rounding (runtime/layers/gptq.py): what it promises about the integers it picks."""

import torch

from runtime.layers import gptq
from runtime.layers.quant import Int8Linear


def _layer_and_inputs(seed=0, out_features=48, in_features=160, tokens=600):
    """A weight and inputs whose features are correlated (as a model's activations are)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * 0.05
    x = torch.randn(tokens, 16, generator=g) @ torch.randn(16, in_features, generator=g)
    x += 0.1 * torch.randn(tokens, in_features, generator=g)
    return w, x


def test_gptq_moves_the_outputs_less_than_round_to_nearest_on_its_inputs():
    w, x = _layer_and_inputs()
    q, scale = gptq.gptq_round(w, x.T @ x)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / 127)  # the int8 layout's per-row scale
    rtn = Int8Linear.from_float(w)
    error = {name: float((x @ (layer.dequantize() - w).T).norm())
             for name, layer in (("gptq", Int8Linear(q, scale)), ("rtn", rtn))}
    assert error["gptq"] < 0.6 * error["rtn"]
    assert not torch.equal(q, rtn.q)
    # on inputs from elsewhere it is no worse than chance: the error stays of the same order
    _, other = _layer_and_inputs(seed=1)
    assert float((other @ (Int8Linear(q, scale).dequantize() - w).T).norm()) < 3 * float(
        (other @ (rtn.dequantize() - w).T).norm())


def test_rows_are_rounded_independently():
    """So a fused q|k|v weight's rows are those of q, k and v rounded one by one."""
    w, x = _layer_and_inputs()
    h = x.T @ x
    q_all, s_all = gptq.gptq_round(w, h)
    q_top, s_top = gptq.gptq_round(w[:20], h)
    q_rest, _ = gptq.gptq_round(w[20:], h)
    assert torch.equal(torch.cat([q_top, q_rest]), q_all) and torch.equal(s_top, s_all[:20])


def test_inputs_never_seen_get_a_finite_rounding():
    w, x = _layer_and_inputs()
    x[:, 7] = 0  # a feature that is always zero: a zero row and column of H
    q, scale = gptq.gptq_round(w, x.T @ x)
    assert torch.isfinite(scale).all() and int(q.abs().max()) <= 127


def test_calibration_texts_are_fixed_and_sized():
    from transformers import AutoTokenizer

    from runtime.demo.checkpoint import demo_model_path

    tokenizer = AutoTokenizer.from_pretrained(demo_model_path("qwen2", "tiny", "float32"))
    texts = gptq.calibration_texts(tokenizer)
    assert texts == gptq.calibration_texts(tokenizer)
    assert gptq.CALIBRATION_TOKENS <= sum(map(len, texts)) < gptq.CALIBRATION_TOKENS + gptq.CHUNK_TOKENS
    assert all(0 < len(t) <= gptq.CHUNK_TOKENS for t in texts)
    chat_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert sum(chat_start in t for t in texts) >= len(texts) // 2 - 1  # every other one is a chat turn
