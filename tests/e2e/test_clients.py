"""Third-party clients against the server: LangChain, LlamaIndex, SGLang's frontend."""

from __future__ import annotations

import pytest

from tests.e2e.harness import MODEL

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def chat_model(server):
    import langchain_openai  # the test extra installs it

    return langchain_openai.ChatOpenAI(model=MODEL, base_url=f"{server.url}/v1", api_key="unused", max_tokens=5,
                                       temperature=0, max_retries=0, timeout=120)


def test_langchain_invoke_and_stream(chat_model):
    from langchain_core.messages import HumanMessage, SystemMessage

    msg = chat_model.invoke([SystemMessage("Be brief."), HumanMessage("Hello")])
    assert isinstance(msg.content, str)
    assert msg.usage_metadata["output_tokens"] <= 5
    chunks = list(chat_model.stream("Hello"))
    assert "".join(c.content for c in chunks) == chat_model.invoke("Hello").content


def test_langchain_bind_tools_and_tool_round_trip(chat_model):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    bound = chat_model.bind_tools([WEATHER])
    msg = bound.invoke("Weather in Paris?")
    assert isinstance(msg, AIMessage)  # random weights: a call or text; both must parse
    history = [HumanMessage("Weather in Paris?"),
               AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]),
               ToolMessage("sunny, 21C", tool_call_id="call_1")]
    answer = bound.invoke(history)
    assert isinstance(answer, AIMessage)
    streamed = list(bound.stream(history))
    assert streamed


def test_llamaindex_openai_like(server):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms import openai_like

    llm = openai_like.OpenAILike(model=MODEL, api_base=f"{server.url}/v1", api_key="unused", is_chat_model=True,
                                 max_tokens=5, temperature=0, context_window=2048, max_retries=0)
    response = llm.chat([ChatMessage(role="user", content="Hello")])
    assert isinstance(response.message.content, str)
    text = "".join(r.delta or "" for r in llm.stream_chat([ChatMessage(role="user", content="Hello")]))
    assert text == response.message.content
    assert isinstance(llm.complete("Once upon a time").text, str)


def test_sglang_frontend_program(server):
    import sglang as sgl

    backend = sgl.RuntimeEndpoint(server.url)

    @sgl.function
    def quiz(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=3, temperature=0))
        s += sgl.user("Is that right?")
        s += sgl.assistant(sgl.select("verdict", choices=["yes", "no", "unsure"]))

    state = quiz.run(question="What is 2 + 2?", backend=backend)
    assert isinstance(state["answer"], str)
    assert state["verdict"] in ("yes", "no", "unsure")
    streamed = quiz.run(question="Stream it", backend=backend, stream=True)
    assert "".join(streamed.text_iter()) and isinstance(streamed["answer"], str)
    batch = quiz.run_batch([{"question": "a"}, {"question": "b"}], backend=backend)
    assert all(s["verdict"] in ("yes", "no", "unsure") for s in batch)

    @sgl.function
    def forked(s):
        s += "List two fruits: "
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += sgl.gen(f"fruit{i}", max_tokens=2)
        s += forks[0]["fruit0"] + forks[1]["fruit1"]

    assert isinstance(forked.run(backend=backend).text(), str)
