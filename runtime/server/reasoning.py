"""Reasoning models (`--reasoning-parser think`: Qwen3, DeepSeek-R1, QwQ, ...): the output is
`[<think>] reasoning </think> answer`.

For such a request the answer alone is the message `content`; the reasoning goes to
`reasoning_content` (vLLM's and SGLang's field; `separate_reasoning: false` keeps it in
`content`), tool calls are parsed from the answer, and a constraint (JSON schema, regex, tool
calls) holds from the end marker on (GrammarSpec reasoning=True), so thinking does not defeat
structured output. A prompt that already closes the reasoning (Qwen3's template with
`enable_thinking: false` ends in an empty `<think></think>`) makes a plain request.
"""

from __future__ import annotations

from runtime.constrained.base import REASONING_END

REASONING_START = "<think>"
PARSERS = ("none", "think")


def reasoning_mode(prompt_text: str) -> str | None:
    """How this prompt's output begins: "open" inside the reasoning (the prompt ends with
    `<think>`, DeepSeek-R1's templates), "model" when the model may open it itself (Qwen3),
    None when the prompt already closed it (`enable_thinking: false`)."""
    tail = prompt_text.rstrip()
    if tail.endswith(REASONING_END):
        return None
    return "open" if tail.endswith(REASONING_START) else "model"


def _held_back(text: str, marker: str) -> int:
    """How many trailing chars of `text` could still begin `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


def split_reasoning(text: str, mode: str, final: bool = True) -> tuple[str, str]:
    """(reasoning, answer) of an output so far, stripped of the markers and the whitespace
    around them; as `text` grows mid-stream each grows by appending (a tail that may yet
    become a marker, or trailing whitespace, is held back). In "model" mode an output
    that does not open with `<think>` has no reasoning; without the end marker, a finished
    output is all reasoning (cut short by max_tokens)."""
    if mode == "model":
        body = text.lstrip()
        if body.startswith(REASONING_START):
            text = body[len(REASONING_START):]
        elif REASONING_START.startswith(body) and not final:
            return "", ""  # may still become the opening tag
        else:
            return "", text
    end = text.find(REASONING_END)
    if end >= 0:
        return text[:end].strip(), text[end + len(REASONING_END):].lstrip()
    reasoning = text if final else text[:len(text) - _held_back(text, REASONING_END)]
    return reasoning.strip(), ""
