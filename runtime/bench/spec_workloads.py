"""Chat workloads for `radixflow bench spec`: copy-heavy agent/RAG tasks and a no-copy
control. Each builds `n` distinct conversations from templates (seeded), so no request
repeats another one's answer; a workload is a list of steps, each step one request per
conversation (the tool loop feeds each step's answer into the next)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

NAMES = ["Alice Moreau", "Bao Nguyen", "Carlos Ruiz", "Dana Okafor", "Elif Kaya", "Farah Haddad", "Goran Petrov",
         "Hana Sato", "Ivan Novak", "Julia Berg", "Kofi Mensah", "Lena Fischer", "Mateo Silva", "Nora Lind",
         "Omar Aziz", "Priya Raman"]
CITIES = [("Lyon", "France"), ("Osaka", "Japan"), ("Porto", "Portugal"), ("Austin", "United States"),
          ("Leeds", "United Kingdom"), ("Gdansk", "Poland"), ("Cebu", "Philippines"), ("Recife", "Brazil"),
          ("Graz", "Austria"), ("Tartu", "Estonia"), ("Mysore", "India"), ("Hobart", "Australia")]
PRODUCTS = ["stainless steel water bottle", "ergonomic office chair", "noise cancelling headphones",
            "cast iron skillet", "mechanical keyboard", "hiking backpack", "espresso grinder", "desk lamp"]
TOPICS = ["a lighthouse keeper", "a lost umbrella", "the first snow of winter", "a robot learning to paint",
          "a night market", "an old violin", "a city garden", "a long train journey"]
ORDER_SCHEMA = {"type": "object", "additionalProperties": False,
                "required": ["order_id", "customer", "email", "product", "quantity", "city", "country"],
                "properties": {"order_id": {"type": "string"}, "customer": {"type": "string"},
                               "email": {"type": "string"}, "product": {"type": "string"},
                               "quantity": {"type": "integer"}, "city": {"type": "string"},
                               "country": {"type": "string"}}}
TOOL_CALL_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                    "properties": {"name": {"enum": ["get_weather", "get_time"]},
                                   "arguments": {"type": "object", "additionalProperties": False,
                                                 "required": ["city", "country"],
                                                 "properties": {"city": {"type": "string"},
                                                                "country": {"type": "string"}}}}}


@dataclass
class Conversation:
    messages: list[dict]
    params: dict
    # after each step: (messages so far, the answer) -> the next user message, or None to end
    follow_up: Callable[[list[dict], str, int], str | None] | None = None
    steps: int = 1
    answers: list[str] = field(default_factory=list)


def json_extraction(rng: random.Random, i: int) -> Conversation:
    name, (city, country) = NAMES[i % len(NAMES)], rng.choice(CITIES)
    order = f"{rng.choice('ABCDEFGH')}{rng.randrange(10_000, 99_999)}"
    email = name.lower().replace(" ", ".") + "@example.com"
    passage = (f"Order {order} was placed on the web shop by {name} ({email}). It contains "
               f"{rng.randrange(2, 9)} units of the {rng.choice(PRODUCTS)} and will be shipped to {city}, "
               f"{country}, next week. The customer asked for a gift wrap.")
    return Conversation([{"role": "user", "content": f"{passage}\n\nExtract the order from the text above as "
                          "JSON with the keys order_id, customer, email, product, quantity, city and country."}],
                        {"json_schema": json.dumps(ORDER_SCHEMA)})


def rag_quote(rng: random.Random, i: int) -> Conversation:
    (c1, k1), (c2, k2) = rng.sample(CITIES, 2)
    year, people = rng.randrange(1850, 1990), rng.randrange(40, 900)
    docs = [f"[1] The central library of {c1} opened in {year}. It was designed by {NAMES[i % 16]} and holds "
            f"about {people} thousand books, including a large collection of maps of {k1}.",
            f"[2] {c2} is known for its river festival, which takes place every August and draws visitors "
            f"from all over {k2}. The festival started in {year + 17} as a small fishing fair."]
    question = rng.choice([f"When did the central library of {c1} open, and who designed it?",
                           f"When did the river festival in {c2} start?"])
    return Conversation([{"role": "system", "content": "Answer from the documents only. Quote the sentences "
                          "that answer the question word for word, then cite the document number."},
                         {"role": "user", "content": "\n".join(docs) + f"\n\nQuestion: {question}"}], {})


CODE_TEMPLATES = [
    '''def {f}({a}, {b}):
    """Return the {a} entries whose score is above {b}."""
    selected = []
    for entry in {a}:
        score = entry.get("score", 0)
        if score > {b}:
            selected.append(entry)
    selected.sort(key=lambda e: e["score"], reverse=True)
    return selected
''',
    '''def {f}({a}, {b}=10):
    """Split {a} into chunks of at most {b} items."""
    chunks = []
    current = []
    for item in {a}:
        current.append(item)
        if len(current) == {b}:
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    return chunks
''']
CODE_EDITS = ["Rename the function to {g}. Output the whole updated function in a Python code block.",
              "Add type hints to the arguments. Output the whole updated function in a Python code block.",
              "Rename the argument {a} to {c}. Output the whole updated function in a Python code block."]


def code_edit(rng: random.Random, i: int) -> Conversation:
    words = ["records", "rows", "items", "values", "events", "orders", "users", "files"]
    a, c = rng.sample(words, 2)
    f, g = rng.choice(["filter_top", "select_best", "keep_high", "pick_scores"]), rng.choice(["top_entries", "best_of"])
    code = CODE_TEMPLATES[i % len(CODE_TEMPLATES)].format(f=f, a=a, b=rng.choice(["limit", "threshold", "size"]))
    edit = CODE_EDITS[i % len(CODE_EDITS)].format(g=g, a=a, c=c)
    # the answer is the function: an editing agent stops at the end of its code block (the small
    # model would go on to explain the change in free text, which is the free-chat workload's job)
    return Conversation([{"role": "user", "content": f"```python\n{code}```\n\n{edit}"}], {"stop": ["\n```"]})


def tool_loop(rng: random.Random, i: int) -> Conversation:
    cities = rng.sample(CITIES, 3)
    tools = json.dumps([{"name": "get_weather", "parameters": {"city": "string", "country": "string"}},
                        {"name": "get_time", "parameters": {"city": "string", "country": "string"}}])
    ask = ", ".join(f"{c} ({k})" for c, k in cities)

    def follow_up(messages: list[dict], answer: str, step: int) -> str | None:
        if step >= len(cities) - 1:
            return None
        city, country = cities[step]
        result = {"city": city, "country": country, "temperature_c": rng.randrange(-5, 35)}
        return f"Tool result: {json.dumps(result)}\nCall the tool for the next city in the list."

    return Conversation([{"role": "system", "content": f"You can call these tools: {tools}. Reply with one "
                          "JSON tool call and nothing else."},
                         {"role": "user", "content": f"Get the weather for each of these cities, one call at a "
                          f"time: {ask}."}],
                        {"json_schema": json.dumps(TOOL_CALL_SCHEMA)}, follow_up, steps=len(cities))


def free_chat(rng: random.Random, i: int) -> Conversation:
    topic = TOPICS[i % len(TOPICS)]
    return Conversation([{"role": "user", "content": rng.choice(["Write a short poem about", "Tell a short story "
                          "about", "Describe, in a few sentences,"]) + f" {topic}."}], {})


WORKLOADS: dict[str, Callable[[random.Random, int], Conversation]] = {
    "json-extraction": json_extraction, "rag-quote": rag_quote, "code-edit": code_edit,
    "tool-loop": tool_loop, "free-chat": free_chat}
