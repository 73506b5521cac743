"""Our GGUF loader against transformers' own GGUF loading (`from_pretrained(dir,
gguf_file=...)`), in float32 and greedy: token-identical outputs and close logprobs, on
the real SmolLM2-135M-Instruct Q4_1 file and on llama.cpp-style files written from the
random Llama (q/k rows permuted) and Qwen2 (biases) demo checkpoints."""

from __future__ import annotations

import functools

import gguf
import pytest
import torch

from runtime.demo.checkpoint import demo_model_path
from runtime.models.gguf_loader import convert_gguf
from runtime.models.resolve import default_model_file
from tests.gguf_files import write_gguf_from_checkpoint
from tests.helpers import make_core, random_prompts, run_core

NEW_TOKENS = 24
GREEDY = {"max_new_tokens": NEW_TOKENS, "temperature": 0.0}


@functools.lru_cache(maxsize=2)
def hf_gguf_model(gguf_file: str):
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    path = Path(gguf_file)
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def hf_greedy(model, prompt: list[int]) -> tuple[list[int], list[float]]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
    ids = out.sequences[0, len(prompt):].tolist()
    return ids, [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, ids)]


def assert_parity(gguf_file, prompts: list[list[int]], logprob_tol: float) -> None:
    model = hf_gguf_model(str(gguf_file))
    core = make_core(convert_gguf(gguf_file), dtype="float32")
    got = run_core(core, prompts, GREEDY, return_logprob=True)
    for i, prompt in enumerate(prompts):
        ref_ids, ref_lps = hf_greedy(model, prompt)
        out = got[f"r{i}"]
        assert out["output_ids"] == ref_ids, f"prompt {i} (len {len(prompt)}) diverged"
        worst = max(abs(a - b) for a, b in zip(out["logprobs"], ref_lps))
        assert worst < logprob_tol, f"prompt {i}: logprob off by {worst:.2e}"
    core.scheduler.check_no_leaks()


@pytest.fixture(scope="module")
def smollm2_prompts():
    from transformers import AutoTokenizer

    from runtime.models.resolve import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(None).path)
    questions = ["What is the capital of France?", "Write a haiku about the sea.",
                 "Explain in one sentence what a CPU does.", "List three prime numbers."]
    chats = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for q in questions]
    return [tok.encode(c, add_special_tokens=False) for c in chats] + [tok.encode("Once upon a time, there")]


def test_smollm2_matches_transformers(smollm2_prompts):
    assert_parity(default_model_file(), smollm2_prompts, logprob_tol=2e-3)


@pytest.mark.parametrize("arch,qtype", [("llama", gguf.GGMLQuantizationType.F32),
                                        ("qwen2", gguf.GGMLQuantizationType.Q8_0)])
def test_written_gguf_matches_transformers(tmp_path_factory, arch, qtype):
    out = tmp_path_factory.mktemp(f"gguf-{arch}") / f"{arch}.gguf"
    gguf_file = write_gguf_from_checkpoint(demo_model_path(arch, "tiny", "float32"), out, qtype)
    assert_parity(gguf_file, random_prompts(lens=(5, 64, 150), seed=3), logprob_tol=1e-3)
