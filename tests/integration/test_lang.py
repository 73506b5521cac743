"""Frontend programs (`runtime.lang`) on the real default model, against the in-process
`Runtime` and a live `radixflow serve` through `RuntimeEndpoint` (its native API) and
`OpenAI` (its chat-completions API): the same programs, right answers on easy questions,
constraints that hold, tool calls that parse, cache hits from fork and batch.
Programs that write text outside role blocks or score choices by prompt logprobs run on
the two text backends only (a chat API has neither)."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import jsonschema
import pytest

import runtime as rt
from tests.e2e.harness import start_server, stop_server

IP_REGEX = r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)"


@pytest.fixture(scope="module")
def server():
    server = start_server(model_args=[])  # the default model
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def backends(server):
    """Each kind of backend, made once for the module."""
    made = {}
    makers = {"runtime": rt.Runtime, "endpoint": lambda: rt.RuntimeEndpoint(server.url),
              "openai": lambda: rt.OpenAI(base_url=f"{server.url}/v1")}

    def get(kind: str):
        if kind not in made:
            made[kind] = makers[kind]()
        return made[kind]

    yield get
    for backend in made.values():
        backend.shutdown()


@pytest.fixture(params=["runtime", "endpoint", "openai"])
def backend(request, backends):
    return backends(request.param)


@pytest.fixture(params=["runtime", "endpoint"])
def text_backend(request, backends):
    """Text backends only: a chat API takes messages (no text outside role blocks) and
    offers no prompt logprobs."""
    return backends(request.param)


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


def test_few_shot_qa_run_and_batch(text_backend):
    backend = text_backend
    state = few_shot_qa.run(question="What is the capital of France?", backend=backend, temperature=0)
    assert state["answer"].strip() == "Paris"
    states = few_shot_qa.run_batch([{"question": f"What is the capital of {c}?"} for c in ("France", "Italy")],
                                   backend=backend, temperature=0, progress_bar=True)
    assert [s["answer"].strip() for s in states] == ["Paris", "Rome"]
    # the batch's shared few-shot prefix was prefilled once: both items read it from the cache
    shared = len(backend_tokens(backend, "Answer each question with one word.\nQ: What is the capital of Germany?"))
    assert all(s.get_meta_info("answer")["cached_tokens"] >= shared for s in states)


def backend_tokens(backend, text: str) -> list[int]:
    return backend.tokenize([text])[0]


@rt.function
def few_shot_chat(s, question):
    s += rt.system("Answer each question with one word.")
    for q, a in (("What is the capital of Germany?", "Berlin"), ("What is the capital of Spain?", "Madrid")):
        s += rt.user(q) + rt.assistant(a)
    s += rt.user(question) + rt.assistant(rt.gen("answer", max_tokens=8, stop=["\n", "."]))


def test_few_shot_chat_run_and_batch(backend):
    state = few_shot_chat.run(question="What is the capital of France?", backend=backend, temperature=0)
    assert state["answer"].strip() == "Paris"
    states = few_shot_chat.run_batch([{"question": f"What is the capital of {c}?"} for c in ("Japan", "China")],
                                     backend=backend, temperature=0)
    assert [s["answer"].strip() for s in states] == ["Tokyo", "Beijing"]
    # every item read the shared few-shot turns from the cache
    assert all(s.get_meta_info("answer")["cached_tokens"] >= 40 for s in states)


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

    state = chat.run(backend=backend, temperature=0)
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
def test_select_methods(text_backend, method):
    backend = text_backend
    @rt.function
    def pick(s):
        s += "Q: What is the capital of France?\nA: The capital of France is"
        s += rt.select("city", choices=[" Paris", " London", " Tokyo"], choices_method=getattr(rt, method))

    state = pick.run(backend=backend, temperature=0)
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

    state = typed.run(backend=backend, temperature=0)
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
        with s.user(), s.var_scope("question"):
            s += f"In which country is {city}?"
        s += rt.assistant(rt.gen("country", max_tokens=24))

    state = two_steps.run(backend=backend, temperature=0)
    city = state["city"].strip().split()[-1]
    assert state["question"] == f"In which country is {city}?"
    assert state.messages()[-2] == {"role": "user", "content": f"In which country is {city}?"}
    if not isinstance(backend, rt.OpenAI):
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

    state = tips.run(backend=backend, temperature=0)
    assert len(state["tip"]) == 5 and all(isinstance(t, str) and t for t in state["tip"])
    metas = state.get_meta_info("tip")
    for meta in metas:  # the shared system + user turn came from the cache
        assert meta["cached_tokens"] >= meta["prompt_tokens"] - 8



def test_streaming_text_iter_and_async_iter(backend):
    state = chat_qa.run(question="Tell me a short story about a cat.", stream=True, backend=backend, temperature=0)
    pieces = list(state.text_iter("answer"))
    assert len(pieces) > 3 and "".join(pieces) == state["answer"]

    async def collect():
        s = chat_qa.run(question="Tell me a short story about a dog.", stream=True, backend=backend, temperature=0,
                        return_logprob=True)
        return [item async for item in s.text_async_iter("answer", return_meta_data=True)], s

    chunks, s = asyncio.run(collect())
    assert "".join(text for text, _ in chunks) == s["answer"]
    assert chunks[-1][1]["output_token_logprobs"]  # streamed logprobs


def test_run_async_many_at_once(backend):
    questions = [f"What is {a} plus {a}?" for a in range(16)]

    async def main():
        return await asyncio.gather(*[chat_qa.run_async(question=q, backend=backend, temperature=0, max_new_tokens=8)
                                      for q in questions])

    states = asyncio.run(main())
    assert len(states) == 16 and all(s["answer"] for s in states)


def test_batch_item_errors_stay_in_their_state(backend):
    @rt.function
    def maybe_fail(s, fail):
        s += rt.user("Say hi") + rt.assistant(rt.gen("x", max_tokens=2))
        if fail:
            raise ValueError("boom")

    ok, bad = maybe_fail.run_batch([{"fail": False}, {"fail": True}], backend=backend, temperature=0)
    assert ok.error() is None and ok["x"]
    assert isinstance(bad.error(), ValueError)
    with pytest.raises(ValueError, match="boom"):
        maybe_fail.run(fail=True, backend=backend, temperature=0)


def test_text_only(backend):
    with pytest.raises(NotImplementedError, match="text models only"):
        rt.image("cat.png")


def get_weather(city: str) -> str:
    """Get the current weather in a given city.

    Args:
        city: The city name
    """
    return f"{city}: 22 degrees Celsius, sunny."


@pytest.mark.parametrize("tool_choice", ["required", "get_weather"])
def test_tools_inside_gen_give_parsed_calls_and_a_tool_loop(backend, tool_choice):
    @rt.function
    def weather_agent(s, question):
        s += rt.user(question)
        s += rt.assistant(rt.gen("calls", tools=[get_weather], tool_choice=tool_choice, parallel_tool_calls=False,
                                 max_tokens=48))
        for call in s["calls"]:
            s += rt.tool(get_weather(**call["arguments"]))
        s += rt.assistant(rt.gen("answer", max_tokens=48))

    state = weather_agent.run(question="What is the weather like in Paris?", backend=backend, temperature=0)
    calls = state["calls"]
    assert len(calls) == 1 and calls[0]["name"] == "get_weather" and calls[0]["arguments"] == {"city": "Paris"}
    assert "22" in state["answer"] and "sunny" in state["answer"], state["answer"]
    messages = state.messages()
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    [call] = messages[1]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert messages[2]["tool_call_id"] == call["id"] == calls[0]["id"]
    if not isinstance(backend, rt.OpenAI):  # the model saw the tool in its system message
        assert '"name": "get_weather"' in state.text().split("<|im_start|>user")[0]


def test_tools_auto_lets_the_model_answer_in_text(backend):
    @rt.function
    def chat_with_tools(s):
        s += rt.user("Say hello.")
        s += rt.assistant(rt.gen("reply", tools=[get_weather], max_tokens=24))

    state = chat_with_tools.run(backend=backend, temperature=0)
    meta = state.get_meta_info("reply")
    assert state["reply"] == [] and meta["content"]  # the 135M model does not call tools unasked


def test_classic_stop_evaluate_continue(text_backend):
    @rt.function
    def calculator(s):
        s += "Q: A box holds 12 eggs. How many eggs are in 7 boxes?\n"
        s += "Calculation: " + rt.gen("expr", regex=r"[0-9]+ ?\* ?[0-9]+", max_tokens=12)
        s += " = " + str(eval(s["expr"])) + "\nAnswer:" + rt.gen("answer", max_tokens=12, stop="\n")

    state = calculator.run(backend=text_backend, temperature=0)
    assert f"= {eval(state['expr'])}\nAnswer:" in state.text() and state["answer"]


def test_stop_regex(backend):
    @rt.function
    def count(s):
        s += rt.user("Count from 1 to 10, separated by commas.")
        s += rt.assistant(rt.gen("numbers", max_tokens=40, stop_regex=r"\b5\b"))

    state = count.run(backend=backend, temperature=0)
    assert "4" in state["numbers"] and "5" not in state["numbers"] and "6" not in state["numbers"]


def test_react_loop_with_select(backend):
    @rt.function
    def react(s, question):
        s += rt.system("You solve problems step by step. Each step is an action: calculate or finish.")
        s += rt.user(question)
        for step in range(3):
            s += rt.assistant(rt.select(f"action_{step}", choices=["calculate", "finish"]))
            if s[f"action_{step}"] == "finish":
                break
            s += rt.user("Write the arithmetic expression.")
            s += rt.assistant(rt.gen(f"expr_{step}", regex=r"[0-9]+ ?[-+*] ?[0-9]+", max_tokens=12))
            s += rt.user(f"Observation: {eval(s[f'expr_{step}'])}. Next action?")
        s += rt.user("Give the final answer.") + rt.assistant(rt.gen("answer", max_tokens=16))

    state = react.run(question="What is 17 plus 25?", backend=backend, temperature=0)
    actions = [state[k] for k in state.variables if k.startswith("action_")]
    assert actions and set(actions) <= {"calculate", "finish"}
    for k, v in state.variables.items():
        if k.startswith("expr_"):
            assert re.fullmatch(r"[0-9]+ ?[-+*] ?[0-9]+", v)
    assert state["answer"]


def test_hellaswag_style_select_over_a_batch(backend):
    @rt.function
    def pick_ending(s, context, endings):
        s += rt.user(f"Complete the sentence: {context} ...")
        s += rt.assistant(rt.select("ending", choices=[f"{context} {e}." for e in endings]))

    items = [
        {"context": "She poured the coffee into the", "endings": ["cup", "shoe", "cloud"]},
        {"context": "He opened the door with a", "endings": ["banana", "key", "song"]},
        {"context": "To see in the dark, he turned on the", "endings": ["sandwich", "light", "river"]},
    ]
    states = pick_ending.run_batch(items, backend=backend, temperature=0)
    assert [s["ending"].split()[-1] for s in states] == ["cup.", "key.", "light."]


def sglang_programs(sgl):
    """Programs in SGLang's frontend language, written once against a module `sgl`."""

    @sgl.function
    def tool_use(s, question):
        s += "To answer this question: " + question + ". "
        s += "I need to use a " + sgl.gen("tool", choices=["calculator", "search engine"]) + ". "
        if s["tool"] == "calculator":
            s += "The math expression is" + sgl.gen("expression", max_tokens=12, stop="\n")
        else:
            s += "The key word to search is" + sgl.gen("word", max_tokens=8, stop="\n")

    @sgl.function
    def tip_suggestion(s):
        s += "Here are two tips for staying healthy: 1. Balanced Diet. 2. Regular Exercise.\n\n"
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Now, expand tip {i + 1} into a paragraph:\n"
            f += sgl.gen("detailed_tip", max_tokens=24, stop="\n\n")
        s += "Tip 1:" + forks[0]["detailed_tip"] + "\n"
        s += "Tip 2:" + forks[1]["detailed_tip"] + "\n"
        s += "In summary" + sgl.gen("summary", max_tokens=16)

    @sgl.function
    def regular_expression_gen(s):
        s += "Q: What is the IP address of the Google DNS servers?\n"
        s += "A: " + sgl.gen("answer", temperature=0, regex=IP_REGEX)

    return tool_use, tip_suggestion, regular_expression_gen


def test_sglang_programs_run_unchanged_and_write_the_same_text():
    """The same SGLang programs through SGLang's own frontend and through ours (only the
    import differs), greedy, on the same server: the same prompt text and outputs. In
    float32, and from an empty cache each time: bf16 logits of a prefix read from the
    cache differ from a fresh prefill's in the last bits, enough to flip a greedy tie."""
    import sglang

    server = start_server("--dtype", "float32", model_args=[])
    theirs, ours = sglang_programs(sglang), sglang_programs(rt)
    sgl_backend, our_backend = sglang.RuntimeEndpoint(server.url), rt.RuntimeEndpoint(server.url)

    def run(program, backend, **args):
        httpx.post(f"{server.url}/flush_cache", timeout=30).raise_for_status()
        return program.run(**args, backend=backend, temperature=0).text()

    def run_batch(program, backend, batch):
        httpx.post(f"{server.url}/flush_cache", timeout=30).raise_for_status()
        return [s.text() for s in program.run_batch(batch, backend=backend, temperature=0)]

    try:
        for their_prog, our_prog in zip(theirs, ours):
            args = {"question": "What is 1234 times 5678?"} if their_prog.func.__name__ == "tool_use" else {}
            assert run(our_prog, our_backend, **args) == run(their_prog, sgl_backend, **args)
        batch = [{"question": q} for q in ("What is 12 plus 30?", "Who wrote Hamlet?")]
        assert run_batch(ours[0], our_backend, batch) == run_batch(theirs[0], sgl_backend, batch)
    finally:
        our_backend.shutdown()
        stop_server(server)


def test_fork_before_any_text_and_n_samples(backend):
    @rt.function
    def two_ways(s):
        forks = s.fork(2)  # nothing written yet
        for i, f in enumerate(forks):
            f += rt.user(f"Name a {['fruit', 'colour'][i]}.") + rt.assistant(rt.gen("word", max_tokens=8))
        forks.join()
        s += rt.user("Name an animal.") + rt.assistant(rt.gen("animals", n=3, max_tokens=8, temperature=1.0))

    state = two_ways.run(backend=backend, temperature=0)
    assert len(state["word"]) == 2 and all(state["word"])
    assert len(state["animals"]) == 3 and len(state.get_meta_info("animals")) == 3


def test_a_server_error_raises_with_the_server_message(backend):
    @rt.function
    def bad_regex(s):
        s += rt.user("Hi") + rt.assistant(rt.gen("x", regex="(unclosed", max_tokens=4))

    # in-process the engine's abort message; over HTTP the server's 400 and its message
    message = "aborted the request: .*regex" if isinstance(backend, rt.Runtime) else "answered 400: .*regex"
    with pytest.raises(RuntimeError, match=message):
        bad_regex.run(backend=backend)
