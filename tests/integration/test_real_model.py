"""Answer quality on the real default model, SmolLM2-135M-Instruct (bf16, greedy), through
the offline Engine: facts, JSON-schema extraction from a passage, and a multi-turn chat
whose second turn refers to the first and reads it from the radix cache — unquantized
and with int8 / int4 weights."""

from __future__ import annotations

import json

import pytest

import runtime
from runtime.config import cpu_has_fast_bf16
from runtime.models.resolve import DEFAULT_MODEL_NAME


@pytest.fixture(scope="module", params=["none", "int8", "int4"])
def engine(request):
    eng = runtime.Engine(quantization=request.param)  # no model path: the default model
    yield eng
    eng.shutdown()


def chat(engine, messages: list[dict], **params) -> dict:
    prompt = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return engine.generate(prompt, {"max_new_tokens": 48, "temperature": 0, **params})


def test_default_model_is_smollm2_in_its_auto_dtype(engine):
    assert engine.served_model_name == DEFAULT_MODEL_NAME
    assert engine.info["architecture"] == "LlamaForCausalLM" and engine.info["dtype"] == (
        "torch.bfloat16" if cpu_has_fast_bf16() else "torch.float32")  # auto: fp32 where bf16 is emulated
    assert engine.info["vocab_size"] == 49152


@pytest.mark.parametrize("question,answer", [
    ("What is the capital of France?", "Paris"),
    ("What is 2+2?", "4"),
    ("How many days are in a week?", "7"),
])
def test_factual_answers(engine, question, answer):
    out = chat(engine, [{"role": "user", "content": question}])
    assert answer in out["text"], out["text"]
    assert out["meta_info"]["finish_reason"]["type"] == "stop"  # ended with <|im_end|>, not cut off


@pytest.mark.parametrize("passage,schema,expected", [
    ("Marie Curie was a physicist and chemist. She was born in Warsaw in 1867 and later moved to Paris, "
     "where she won two Nobel Prizes.",
     {"name": "string", "birth_city": "string", "birth_year": "integer"},
     {"name": "Marie Curie", "birth_city": "Warsaw", "birth_year": 1867}),
    ("The Eiffel Tower is a wrought-iron tower in Paris, France. It was completed in 1889 and is 330 metres tall.",
     {"name": "string", "city": "string", "year_completed": "integer"},
     {"city": "Paris", "year_completed": 1889}),
])
def test_json_schema_extraction(engine, passage, schema, expected):
    json_schema = {"type": "object", "properties": {k: {"type": t} for k, t in schema.items()},
                   "required": list(schema), "additionalProperties": False}
    fields = ", ".join(k.replace("_", " ") for k in schema)
    question = f"Extract the {fields} from this text as JSON.\n\nText: {passage}"
    out = chat(engine, [{"role": "user", "content": question}], json_schema=json.dumps(json_schema), max_new_tokens=64)
    value = json.loads(out["text"])
    assert set(value) == set(schema)
    for key, want in expected.items():
        assert value[key] == want, out["text"]


def test_multi_turn_refers_to_turn_one_and_hits_the_cache(engine):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    first = chat(engine, messages)
    assert "Paris" in first["text"]
    messages += [{"role": "assistant", "content": first["text"]},
                 {"role": "user", "content": "What famous tower is in that city?"}]
    second = chat(engine, messages)
    assert "Eiffel" in second["text"], second["text"]
    # turn 1's prompt and answer come from the radix tree
    assert second["meta_info"]["cached_tokens"] >= first["meta_info"]["prompt_tokens"] + \
        first["meta_info"]["completion_tokens"] - 2
