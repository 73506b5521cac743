"""runtime/server/reasoning.py: where a reasoning model's output splits into reasoning and answer."""

from __future__ import annotations

import pytest

from runtime.server.reasoning import reasoning_mode, split_reasoning


def test_the_prompt_tells_how_the_output_begins():
    assert reasoning_mode("<|im_start|>assistant\n") == "model"  # Qwen3: the model opens <think>
    assert reasoning_mode("<｜Assistant｜><think>\n") == "open"  # DeepSeek-R1: the prompt opened it
    assert reasoning_mode("<|im_start|>assistant\n<think>\n\n</think>\n\n") is None  # enable_thinking: false


@pytest.mark.parametrize("mode, text, expected", [
    ("model", "<think>\nplan it\n</think>\n\n{\"a\": 1}", ("plan it", '{"a": 1}')),
    ("model", '{"a": 1}', ("", '{"a": 1}')),  # the model did not think
    ("model", "<think>cut short by max_tokens", ("cut short by max_tokens", "")),
    ("open", "plan it</think>answer", ("plan it", "answer")),
    ("open", "cut short", ("cut short", "")),
    ("model", "<think>a </think> b </think>", ("a", "b </think>")),  # the first end marker ends it
])
def test_split(mode, text, expected):
    assert split_reasoning(text, mode) == expected


@pytest.mark.parametrize("mode, text", [
    ("model", "  <think>\nLet me think: 2 < 3 and </th is not the end.\n</think>\n\nThe answer"),
    ("model", "No thinking here <think> at all"),
    ("open", "I reason </thin </think>{\"x\": [1, 2]}"),
])
def test_streamed_parts_only_grow_and_end_as_the_whole(mode, text):
    """Every prefix of the output (a stream's cumulative text) splits into parts that extend
    the previous prefix's parts, so deltas never retract; the end equals the unstreamed split."""
    previous = ("", "")
    for end in range(len(text) + 1):
        parts = split_reasoning(text[:end], mode, final=end == len(text))
        assert parts[0].startswith(previous[0]) and parts[1].startswith(previous[1]), (text[:end], parts)
        previous = parts
    assert previous == split_reasoning(text, mode)


def test_grammar_reasoning_reaches_the_grammar_spec():
    from runtime.constrained.base import GrammarSpec
    from runtime.core import SamplingParams

    assert GrammarSpec.from_sampling_params(SamplingParams(regex="(yes|no)", grammar_reasoning=True)).reasoning
    assert not GrammarSpec.from_sampling_params(SamplingParams(regex="(yes|no)")).reasoning
    with pytest.raises(ValueError, match="grammar_reasoning must be a boolean"):
        SamplingParams(grammar_reasoning="yes").validate()
