"""The OpenAI Agents SDK on Radixflow (chat-completions mode, tracing off): a function tool
and a typed output.

    python examples/agents/openai_agents_sdk.py
"""

from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI
from pydantic import BaseModel

from runtime.integrations.local_server import LocalServer


class Person(BaseModel):
    name: str
    age: int


@function_tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 C in {city}."


def main():
    set_tracing_disabled(True)  # no tracing export (there is no OpenAI account behind this)
    with LocalServer() as server:
        model = OpenAIChatCompletionsModel(model=server.model,
                                           openai_client=AsyncOpenAI(base_url=server.openai_base_url, api_key="-"))
        settings = ModelSettings(max_tokens=64, temperature=0)
        # tool_choice "required" is decoded under the tool's grammar; the tool's result is the answer
        weather = Agent(name="weather", instructions="Answer weather questions.", model=model, tools=[get_weather],
                        tool_use_behavior="stop_on_first_tool",
                        model_settings=ModelSettings(tool_choice="required", max_tokens=64, temperature=0))
        print("tool result:", Runner.run_sync(weather, "What's the weather in Paris?", max_turns=2).final_output)
        extractor = Agent(name="extract", model=model, output_type=Person, model_settings=settings)
        person = Runner.run_sync(extractor, "Alice is 30 years old. Extract the person.").final_output
        print("structured:", repr(person))


if __name__ == "__main__":
    main()
