"""Workloads of `radixflow bench serve`: sessions of chat turns, built from a seed.

A session is one conversation; its turns run in order, each after the previous reply
(multi-turn and tool-agent feed replies back as history). Text is drawn from a fixed
word list (about one token per word with the Llama/Qwen/SmolLM2 tokenizers), so a run
needs no data and is the same for every server.

  random         one turn: prompt and output lengths drawn from ranges
  shared-prefix  groups of one-turn requests whose system prompt (the shared prefix) is
                 the same within a group
  multi-turn     conversations: a long system prompt, then user turns; replies fed back
  json-schema    one turn under a strict `response_format` json_schema; outputs validated
  tool-agent     a loop of tool calls (tool_choice "required") and tool results, then a
                 final answer (tool_choice "none")
  rag            a few long retrieved passages (drawn from a shared corpus) + a short question
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

WORDS = ("the city river market people house water light morning garden school road music window "
         "friend story mountain paper table evening forest village letter teacher summer winter "
         "bridge train kitchen doctor island museum harbor library festival farmer painter station "
         "valley castle engine signal report budget country language picture history science").split()

RECORD_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "year": {"type": "integer"},
    "city": {"type": "string", "maxLength": 40}, "tags": {"type": "array", "items": {"type": "string",
                                                                                     "maxLength": 20},
                                                          "maxItems": 3}},
    "required": ["name", "year", "city", "tags"], "additionalProperties": False}

TOOLS = [
    {"type": "function", "function": {
        "name": "search", "description": "Search the knowledge base for passages about a topic.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string", "maxLength": 60}},
                       "required": ["query"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                        "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
]


@dataclass
class Turn:
    """One request of a session. `user` is appended as a user message; `tool_result`
    answers the previous reply's tool calls (or becomes a user message if it made none)."""

    max_tokens: int
    user: str | None = None
    tool_result: str | None = None
    response_format: dict | None = None
    tool_choice: str | None = None


@dataclass
class Session:
    workload: str
    index: int
    system: str
    turns: list[Turn]
    tools: list[dict] | None = None
    schema: dict | None = None  # outputs must validate against it (json-schema)
    ignore_eos: bool = False  # decode max_tokens whatever the model says
    group: int | None = None  # shared-prefix: the group whose prefix it shares
    eos_bias: tuple[int, ...] = ()  # ignore EOS by banning these ids (logit_bias), for servers without ignore_eos

    def extra_body(self) -> dict[str, Any]:
        if not self.ignore_eos:
            return {}
        if self.eos_bias:
            return {"logit_bias": {str(t): -100 for t in self.eos_bias}}
        return {"ignore_eos": True}  # the SGLang / vLLM extra field


@dataclass(frozen=True)
class Shape:
    """Sizes of a workload run (`--quick` divides them)."""

    num_sessions: int = 32
    input_len: tuple[int, int] = (128, 512)  # random: prompt words
    output_len: tuple[int, int] = (32, 128)  # random: output tokens
    groups: int = 4  # shared-prefix
    shared_len: int = 512  # shared-prefix: words in each group's system prompt
    suffix_len: int = 32  # shared-prefix: words in each question
    turns: int = 4  # multi-turn and tool-agent
    system_len: int = 300  # multi-turn / tool-agent system prompt words
    user_len: int = 24  # multi-turn: words per user turn
    turn_output: int = 48  # multi-turn / tool-agent / rag: output tokens per turn
    passages: int = 3  # rag: passages per question
    passage_len: int = 200  # rag: words per passage
    corpus: int = 12  # rag: passages to draw from
    json_output: int = 160  # json-schema and tool calls: token budget (the schema ends it earlier)

    def quick(self) -> "Shape":
        return Shape(num_sessions=4, input_len=(16, 48), output_len=(4, 12), groups=2, shared_len=64, suffix_len=8,
                     turns=2, system_len=48, user_len=8, turn_output=8, passages=2, passage_len=32, corpus=4,
                     json_output=128)


def _text(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def build(workload: str, shape: Shape, seed: int) -> list[Session]:
    if workload not in BUILDERS:
        raise ValueError(f"unknown workload {workload!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[workload](shape, random.Random(f"{workload}-{seed}"))


def _random(shape: Shape, rng: random.Random) -> list[Session]:
    return [Session("random", i, "You are a helpful assistant.",
                    [Turn(rng.randint(*shape.output_len), user=_text(rng, rng.randint(*shape.input_len)))],
                    ignore_eos=True)
            for i in range(shape.num_sessions)]


def _shared_prefix(shape: Shape, rng: random.Random) -> list[Session]:
    prefixes = [f"You answer questions about this document.\n{_text(rng, shape.shared_len)}"
                for _ in range(shape.groups)]
    return [Session("shared-prefix", i, prefixes[i % shape.groups],
                    [Turn(shape.turn_output, user=f"Question: {_text(rng, shape.suffix_len)}?")],
                    ignore_eos=True, group=i % shape.groups)
            for i in range(shape.num_sessions)]


def _multi_turn(shape: Shape, rng: random.Random) -> list[Session]:
    return [Session("multi-turn", i, f"You are a travel assistant. Notes: {_text(rng, shape.system_len)}",
                    [Turn(shape.turn_output, user=_text(rng, shape.user_len)) for _ in range(shape.turns)],
                    ignore_eos=True)
            for i in range(max(1, shape.num_sessions // shape.turns))]


def _json_schema(shape: Shape, rng: random.Random) -> list[Session]:
    fmt = {"type": "json_schema", "json_schema": {"name": "record", "schema": RECORD_SCHEMA, "strict": True}}
    system = ("Extract a record from the passage as JSON with the fields name, year, city and tags.")
    return [Session("json-schema", i, system,
                    [Turn(shape.json_output, user=f"Passage: {_text(rng, shape.user_len * 4)}", response_format=fmt)],
                    schema=RECORD_SCHEMA)
            for i in range(shape.num_sessions)]


def _tool_agent(shape: Shape, rng: random.Random) -> list[Session]:
    system = f"You are an agent. Use the tools to answer. Background: {_text(rng, shape.system_len)}"
    sessions = []
    for i in range(max(1, shape.num_sessions // shape.turns)):
        turns = [Turn(shape.json_output, user=f"Task: {_text(rng, shape.user_len)}", tool_choice="required")]
        turns += [Turn(shape.json_output, tool_result=_text(rng, shape.user_len * 2), tool_choice="required")
                  for _ in range(shape.turns - 2)]
        turns.append(Turn(shape.turn_output, tool_result=_text(rng, shape.user_len * 2), tool_choice="none"))
        sessions.append(Session("tool-agent", i, system, turns, tools=TOOLS))
    return sessions


def _rag(shape: Shape, rng: random.Random) -> list[Session]:
    corpus = [f"[{k}] {_text(rng, shape.passage_len)}" for k in range(shape.corpus)]
    system = "Answer the question using only the retrieved passages."
    sessions = []
    for i in range(shape.num_sessions):
        picked = rng.sample(corpus, shape.passages)
        user = "Passages:\n" + "\n".join(picked) + f"\n\nQuestion: {_text(rng, shape.suffix_len)}?"
        sessions.append(Session("rag", i, system, [Turn(shape.turn_output, user=user)], ignore_eos=True))
    return sessions


BUILDERS = {"random": _random, "shared-prefix": _shared_prefix, "multi-turn": _multi_turn,
            "json-schema": _json_schema, "tool-agent": _tool_agent, "rag": _rag}
WORKLOADS = tuple(BUILDERS)
