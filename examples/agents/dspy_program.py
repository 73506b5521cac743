"""DSPy on Radixflow: a typed Predict (its output schema enforced) and a native tool call.

    python examples/agents/dspy_program.py

`radixflow_lm` declares the server to DSPy as a provider that enforces JSON schemas and tool
calls, so DSPy sends its signature's schema and its tools (an unknown `openai/<model>` gets
neither). Here the server is a LocalServer in this process; for `radixflow serve`, use its URL + /v1.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # DSPy's model metadata: the bundled copy

import dspy  # noqa: E402

from runtime.integrations.dspy import radixflow_lm  # noqa: E402
from runtime.integrations.local_server import LocalServer  # noqa: E402


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


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 C in {city}."


def main():
    with LocalServer() as server:
        lm = radixflow_lm(server.openai_base_url, server.model, max_tokens=64, temperature=0)
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter(use_native_function_calling=True)):
            print("structured:", dspy.Predict(ExtractPerson)(text="Alice is 30 years old."))
            tools = [dspy.Tool(get_weather)]
            plan = dspy.Predict(PlanCalls)(question="What's the weather in Paris?", tools=tools,
                                           config={"tool_choice": "required", "parallel_tool_calls": False})
            for call in plan.calls.tool_calls:
                print(f"tool {call.name}({call.args}) ->", call.execute(functions=tools))


if __name__ == "__main__":
    main()
