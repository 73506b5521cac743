"""pydantic-ai on Radixflow: NativeOutput (our JSON-schema response format, enforced) and a tool.

    python examples/agents/pydantic_ai_agent.py

pydantic-ai's own OpenAI model class, pointed at the runtime (here a LocalServer in this
process; for a running `radixflow serve`, use its URL + /v1).
"""

from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from runtime.integrations.local_server import LocalServer


class Person(BaseModel):
    name: str
    age: int


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 C in {city}."


def main():
    with LocalServer() as server:
        model = OpenAIChatModel(server.model, provider=OpenAIProvider(base_url=server.openai_base_url, api_key="-"))
        settings = {"max_tokens": 64, "temperature": 0}
        person = Agent(model, output_type=NativeOutput(Person), model_settings=settings).run_sync(
            "Alice is 30 years old. Extract the person.").output
        print("structured:", repr(person))
        result = Agent(model, tools=[get_weather], model_settings=settings).run_sync("What's the weather in Paris?")
        print("answer:", result.output)


if __name__ == "__main__":
    main()
