"""LangChain on Radixflow, in this process: a tool-calling agent loop and structured output.

    python examples/agents/langchain_agent.py

ChatRadixflow() runs the default model here (no server to start). The first step must call
the tool (tool_choice="required", enforced by the grammar); the last allowed step must answer
(tool_choice="none"). Each step's prompt extends the last one, so the radix cache serves it.
"""

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from runtime.integrations.langchain import ChatRadixflow


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 C in {city}."


class Person(BaseModel):
    name: str
    age: int


def agent(llm: ChatRadixflow, question: str, max_steps: int = 3) -> list:
    messages = [HumanMessage(question)]
    for step in range(max_steps):
        choice = "required" if step == 0 else ("none" if step == max_steps - 1 else "auto")
        reply = llm.bind_tools([get_weather], tool_choice=choice, parallel_tool_calls=False).invoke(messages)
        messages.append(reply)
        print(f"step {step + 1}: {reply.usage_metadata['input_tokens']} prompt tokens, "
              f"{reply.usage_metadata['input_token_details']['cache_read']} from the cache")
        if not reply.tool_calls:
            return messages
        for call in reply.tool_calls:
            print(f"tool call: {call['name']}({call['args']})")
            messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    return messages


def main():
    with ChatRadixflow(max_tokens=64, temperature=0) as llm:
        messages = agent(llm, "What's the weather in Paris?")
        answer = [m for m in messages if isinstance(m, AIMessage)][-1]
        print("answer:", answer.content)
        person = llm.with_structured_output(Person).invoke("Alice is 30 years old. Extract the person.")
        print("structured:", repr(person))


if __name__ == "__main__":
    main()
