"""Quickstart: a frontend program on the default model, in-process.

    python examples/quickstart.py
"""

import runtime as rt


@rt.function
def capital(s, country):
    s += rt.user(f"What is the capital of {country}?")
    s += rt.assistant(rt.gen("answer", max_tokens=32, temperature=0))


def main():
    with rt.Runtime() as backend:  # no model path: SmolLM2-135M-Instruct (or the demo model)
        state = capital.run(country="France", backend=backend)
        print(state["answer"])
        print(state.get_meta_info("answer")["completion_tokens"], "tokens")


if __name__ == "__main__":
    main()
