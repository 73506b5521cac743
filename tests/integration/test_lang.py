"""Frontend programs (`runtime.lang`) on the real default model, against the in-process
`Runtime` and a live `radixflow serve` through `RuntimeEndpoint`: the same programs,
right answers on easy questions, constraints that hold, cache hits from fork and batch."""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest

import runtime as rt
from tests.e2e.harness import start_server, stop_server

IP_REGEX = r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)"


@pytest.fixture(scope="module", params=["runtime", "endpoint"])
def backend(request):
    if request.param == "runtime":
        backend = rt.Runtime()
        yield backend
        backend.shutdown()
    else:
        server = start_server(model_args=[])  # the default model
        backend = rt.RuntimeEndpoint(server.url)
        yield backend
        backend.shutdown()
        stop_server(server)


@rt.function
def few_shot_qa(s, question):
    s += "Answer each question with one word.\n"
    s += "Q: What is the capital of Germany?\nA: Berlin\n"
    s += "Q: What is the capital of Spain?\nA: Madrid\n"
    s += "Q: " + question + "\nA:" + rt.gen("answer", max_tokens=8, stop="\n")


@rt.function
def chat_qa(s, question):
    s += rt.user(question)
    s += rt.assistant(rt.gen("answer", max_tokens=32))


def test_few_shot_qa_run_and_batch(backend):
    state = few_shot_qa.run(question="What is the capital of France?", backend=backend)
    assert state["answer"].strip() == "Paris"
    states = few_shot_qa.run_batch([{"question": f"What is the capital of {c}?"} for c in ("France", "Italy")],
                                   backend=backend, progress_bar=True)
    assert [s["answer"].strip() for s in states] == ["Paris", "Rome"]
    # the batch's shared few-shot prefix was prefilled once: both items read it from the cache
    shared = len(backend_tokens(backend, "Answer each question with one word.\nQ: What is the capital of Germany?"))
    assert all(s.get_meta_info("answer")["cached_tokens"] >= shared for s in states)


def backend_tokens(backend, text: str) -> list[int]:
    return backend.tokenize([text])[0]


def test_multi_turn_chat_with_roles(backend):
    @rt.function
    def chat(s):
        s += rt.system("You are a helpful assistant.")
        s += rt.user("What is the capital of France?")
        s += rt.assistant(rt.gen("first", max_tokens=24))
        with s.user():
            s += "What famous tower is in that city?"
        with s.assistant():
            s += rt.gen("second", max_tokens=32)

    state = chat.run(backend=backend)
    assert "Paris" in state["first"] and "Eiffel" in state["second"]
    roles = [m["role"] for m in state.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert state.messages()[2]["content"] == state["first"].strip()
    meta = state.get_meta_info("second")
    assert meta["cached_tokens"] >= state.get_meta_info("first")["prompt_tokens"]  # turn 1 came from the cache
    # the text is what the chat template renders for these messages
    if isinstance(backend, rt.Runtime):
        rendered = backend.tokenizer.apply_chat_template(state.messages(), tokenize=False)
        assert state.text() == rendered


@pytest.mark.parametrize("method", ["token_length_normalized", "greedy_token_selection",
                                    "unconditional_likelihood_normalized"])
def test_select_methods(backend, method):
    @rt.function
    def pick(s):
        s += "Q: What is the capital of France?\nA: The capital of France is"
        s += rt.select("city", choices=[" Paris", " London", " Tokyo"], choices_method=getattr(rt, method))

    state = pick.run(backend=backend)
    assert state["city"] == " Paris"
    meta = state.get_meta_info("city")
    assert meta["choices_method"] == method and len(meta["normalized_prompt_logprobs"]) == 3
    assert state.text().endswith("is Paris")


def test_gen_int_dtype_regex_and_json_schema(backend):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}

    @rt.function
    def typed(s):
        s += rt.user("How many legs does a dog have?") + rt.assistant(rt.gen_int("legs", max_tokens=4))
        s += rt.user("Give an example IPv4 address.") + rt.assistant(rt.gen("ip", regex=IP_REGEX, max_tokens=20))
        s += rt.user("Is water wet? Answer True or False.") + rt.assistant(rt.gen("wet", dtype=bool))
        s += rt.user("Extract the city and country as JSON: I live in Paris, France.")
        s += rt.assistant(rt.gen("place", json_schema=json.dumps(schema), max_tokens=40))

    state = typed.run(backend=backend)
    assert isinstance(int(state["legs"]), int)  # constrained to an integer (the 135M model miscounts legs)
    assert re.fullmatch(IP_REGEX, state["ip"])
    assert state["wet"] in ("True", "False")
    place = json.loads(state["place"])
    jsonschema.validate(place, schema)
    assert place["city"] == "Paris"


def test_variables_read_mid_program_and_var_scope(backend):
    @rt.function
    def two_steps(s):
        s += rt.user("Name the capital of France in one word.")
        s += rt.assistant(rt.gen("city", max_tokens=8, stop=[".", "\n"]))
        city = s["city"].strip().split()[-1]
        with s.var_scope("question"):
            s += f"In which country is {city}?"
        s += rt.user(s["question"]) + rt.assistant(rt.gen("country", max_tokens=24))

    state = two_steps.run(backend=backend)
    city = state["city"].strip().split()[-1]
    assert state["question"] == f"In which country is {city}?"
    assert f"<|im_start|>user\nIn which country is {city}?<|im_end|>" in state.text()
    assert state["country"]


def test_fork_join_reads_the_prefix_from_the_cache(backend):
    @rt.function
    def tips(s):
        s += rt.system("You are a concise health coach.")
        s += rt.user("Give me one tip for staying healthy.")
        forks = s.fork(5)
        forks += lambda i: rt.assistant(rt.gen("tip", max_tokens=16, temperature=0.8, top_p=0.95))
        forks.join()

    state = tips.run(backend=backend)
    assert len(state["tip"]) == 5 and all(isinstance(t, str) and t for t in state["tip"])
    prefix_tokens = len(backend_tokens(backend, state.text()))
    for meta in state.get_meta_info("tip"):
        assert meta["cached_tokens"] >= prefix_tokens - 1


def test_streaming_text_iter_and_async_iter(backend):
    state = chat_qa.run(question="Tell me a short story about a cat.", stream=True, backend=backend)
    pieces = list(state.text_iter("answer"))
    assert len(pieces) > 3 and "".join(pieces) == state["answer"]

    async def collect():
        s = chat_qa.run(question="Tell me a short story about a dog.", stream=True, backend=backend,
                        return_logprob=True)
        return [item async for item in s.text_async_iter("answer", return_meta_data=True)], s

    chunks, s = asyncio.run(collect())
    assert "".join(text for text, _ in chunks) == s["answer"]
    assert chunks[-1][1]["output_token_logprobs"]  # streamed logprobs


def test_run_async_many_at_once(backend):
    questions = [f"What is {a} plus {a}?" for a in range(16)]

    async def main():
        return await asyncio.gather(*[chat_qa.run_async(question=q, backend=backend, max_new_tokens=8)
                                      for q in questions])

    states = asyncio.run(main())
    assert len(states) == 16 and all(s["answer"] for s in states)


def test_batch_item_errors_stay_in_their_state(backend):
    @rt.function
    def maybe_fail(s, fail):
        s += "Say hi:" + rt.gen("x", max_tokens=2)
        if fail:
            raise ValueError("boom")

    ok, bad = maybe_fail.run_batch([{"fail": False}, {"fail": True}], backend=backend)
    assert ok.error() is None and ok["x"]
    assert isinstance(bad.error(), ValueError)
    with pytest.raises(ValueError, match="boom"):
        maybe_fail.run(fail=True, backend=backend)


def test_text_only(backend):
    with pytest.raises(NotImplementedError, match="text models only"):
        rt.image("cat.png")
