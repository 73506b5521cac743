"""Every script in examples/ runs on the default model and prints what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STRUCTURED = "structured: Person(name='Alice', age=30)"
EXPECTED = {  # script -> text (or texts) its output must contain
    "quickstart.py": "Paris",
    "multi_turn_chat.py": "Eiffel",
    "json_extraction.py": "'birth_year': 1867",
    "tree_of_thought.py": "best: ",
    "async_batch.py": "'France': 'Paris'",
    "react_agent.py": "-> 3367",
    "parallel_tools.py": "call get_weather({'city': 'Tokyo'})",
    "agents/langchain_agent.py": ("tool call: get_weather({'city': 'Paris'})", STRUCTURED),
    "agents/llamaindex_agent.py": ("tool call: get_weather({'city': 'Paris'})", STRUCTURED),
    "agents/pydantic_ai_agent.py": STRUCTURED,
    "agents/openai_agents_sdk.py": ("tool result: It is sunny and 22 C in Paris.", STRUCTURED),
    "agents/outlines_generation.py": ("sglang regex: ", "vllm regex: ", "openai json: {"),
    "agents/dspy_program.py": ("name='Alice',", "age=30", "tool get_weather({'city': 'Paris'}) -> It is sunny"),
    "agents/litellm_completion.py": ("hosted_vllm: Person(name='Alice', age=30)", "openai: Person("),
}


def test_every_example_is_listed():
    scripts = [p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py")]
    assert sorted(scripts) == sorted(EXPECTED)
    for script in EXPECTED:  # each folder's README names its scripts
        folder = (EXAMPLES / script).parent
        assert f"`{Path(script).name}`" in (folder / "README.md").read_text(), script


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300,
                          cwd=EXAMPLES.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = EXPECTED[script]
    for text in (expected,) if isinstance(expected, str) else expected:
        assert text in proc.stdout, proc.stdout
