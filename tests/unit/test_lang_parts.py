"""Frontend pieces without a model: choice methods, generation parameters, role markers."""

from __future__ import annotations

import pytest

import runtime as rt
from runtime.chat_roles import read_chat_roles
from runtime.lang.choices import ChoiceScore, resolve_method
from runtime.lang.ir import DEFAULT_PARAMS, REGEX_INT, GenParams


def test_choice_methods():
    scores = [ChoiceScore([-1.0, -5.0], [-2.0, -1.0]), ChoiceScore([-2.0], [-4.0]),
              ChoiceScore([-1.0, -0.1], [0.0, -0.1])]
    assert rt.token_length_normalized.pick(scores) == 2  # means -3, -2, -0.55
    assert rt.greedy_token_selection.pick(scores) == 2  # tie at token 0 between 0 and 2; 2 wins token 1
    assert rt.unconditional_likelihood_normalized.pick(scores) == 1  # gains -1.5, +2, -0.5
    assert resolve_method(None) is rt.token_length_normalized
    assert resolve_method("greedy_token_selection") is rt.greedy_token_selection
    import sglang.lang.choices as sgl_choices  # SGLang programs pass SGLang's own method objects

    assert resolve_method(sgl_choices.unconditional_likelihood_normalized) is rt.unconditional_likelihood_normalized
    with pytest.raises(ValueError, match="unknown choices_method"):
        resolve_method("best")


def test_gen_params_merge_and_map_to_engine_names():
    params = DEFAULT_PARAMS.merged(GenParams(temperature=0.7)).merged(GenParams(max_tokens=5, dtype=int))
    sampling, options = params.to_engine()
    assert sampling == {"max_new_tokens": 5, "temperature": 0.7, "regex": REGEX_INT}
    assert options == {"return_logprob": False, "top_logprobs_num": 0}
    sampling, _ = GenParams(json_schema={"type": "object"}, min_tokens=2).to_engine()
    assert sampling == {"json_schema": '{"type": "object"}', "min_new_tokens": 2}
    with pytest.raises(TypeError, match="unknown generation parameter"):
        rt.gen("x", max_new_token=3)
    with pytest.raises(ValueError, match="non-empty list of choices"):
        rt.select("x", choices=[])


@pytest.mark.parametrize("which", ["qwen-demo", "smollm2"])
def test_role_markers_reproduce_the_template(which, tokenizer):
    from transformers import AutoTokenizer

    from runtime.models.resolve import resolve_model

    tok = tokenizer if which == "qwen-demo" else AutoTokenizer.from_pretrained(resolve_model(None).path)

    def render(messages, add_generation_prompt):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    roles = read_chat_roles(render)
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Bye"}]
    text = roles.default_system + "".join(roles.markers[m["role"]][0] + m["content"] + roles.markers[m["role"]][1]
                                          for m in convo)
    assert text == render(convo, False)
    assert text + roles.markers["assistant"][0] == render(convo, True)
