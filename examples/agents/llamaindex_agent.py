"""LlamaIndex on Radixflow, in this process: a FunctionAgent with a tool, and structured_predict.

    python examples/agents/llamaindex_agent.py

Radixflow() runs the default model here. `initial_tool_choice` makes the agent's first step
call the tool (enforced by the grammar); after `max_iterations` it writes its answer.
"""

import asyncio

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.prompts import PromptTemplate
from pydantic import BaseModel

from runtime.integrations.llama_index import Radixflow


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 C in {city}."


class Person(BaseModel):
    name: str
    age: int


async def ask(agent: FunctionAgent, question: str):
    return await agent.run(question, max_iterations=3, early_stopping_method="generate")


def main():
    with Radixflow(max_tokens=64, temperature=0) as llm:
        agent = FunctionAgent(tools=[get_weather], llm=llm, initial_tool_choice="get_weather",
                              system_prompt="You answer weather questions with the get_weather tool.")
        result = asyncio.run(ask(agent, "What's the weather in Paris?"))
        for call in result.tool_calls:
            print(f"tool call: {call.tool_name}({call.tool_kwargs}) -> {call.tool_output}")
        print("answer:", result.response.content)
        person = llm.structured_predict(Person, PromptTemplate("Alice is 30 years old. {task}"),
                                        task="Extract the person.")
        print("structured:", repr(person))


if __name__ == "__main__":
    main()
