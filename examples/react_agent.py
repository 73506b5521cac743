"""An agent loop with real tools: the model calls a tool (`gen(tools=...)`; the first step
must call one, `tool_choice="required"`, and the call always parses), the tool runs, its
result goes back as a tool message, and from then on the model decides (`"auto"`): call
again, or answer.

    python examples/react_agent.py
"""

import ast
import operator

import runtime as rt

FACTS = {  # a tiny local "search index"
    "eiffel tower": "The Eiffel Tower in Paris is 330 metres tall and was completed in 1889.",
    "mount everest": "Mount Everest is 8849 metres high, on the border of Nepal and China.",
    "python": "Python is a programming language created by Guido van Rossum, first released in 1991.",
}
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses.

    Args:
        expression: The expression, e.g. 2 * (3 + 4)
    """
    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    try:
        return str(value(ast.parse(expression, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError) as e:
        return f"error: {e}"


def search(query: str) -> str:
    """Look up a fact in the encyclopedia.

    Args:
        query: What to look up, e.g. Eiffel Tower
    """
    query = query.lower().strip()
    hits = [text for key, text in FACTS.items() if query and (key in query or query in key)]
    return " ".join(hits) or "no results"


TOOLS = {"calculator": calculator, "search": search}


@rt.function
def agent(s, question, max_steps=3):
    s += rt.user(question)
    for step in range(max_steps):
        s += rt.assistant(rt.gen(f"step_{step}", tools=list(TOOLS.values()),
                                 tool_choice="required" if step == 0 else "auto", max_tokens=64, temperature=0))
        calls = s[f"step_{step}"]
        if not calls:  # the model answered
            s["answer"] = s.get_meta_info(f"step_{step}")["content"]
            return
        for call in calls:
            s += rt.tool(TOOLS[call["name"]](**call["arguments"]))


def main():
    with rt.Runtime() as backend:
        for question in ("What is 37 times 91?", "Search the encyclopedia: how tall is the Eiffel Tower?"):
            state = agent.run(question=question, backend=backend)
            print("Q:", question)
            for message in state.messages()[1:-1]:
                for call in message.get("tool_calls", []):
                    print(f"  call {call['function']['name']}({call['function']['arguments']})")
                if message["role"] == "tool":
                    print(f"  -> {message['content']}")
            print("A:", state["answer"] if "answer" in state else "(no answer within the step limit)")


if __name__ == "__main__":
    main()
