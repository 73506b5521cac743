"""A multi-turn chat: turn 2 refers to turn 1, whose tokens come from the radix cache.

    python examples/multi_turn_chat.py                      # in-process
    python examples/multi_turn_chat.py http://127.0.0.1:30000   # a running `radixflow serve`
"""

import sys

import runtime as rt


@rt.function
def chat(s, questions):
    s += rt.system("You are a helpful assistant.")
    for i, question in enumerate(questions):
        s += rt.user(question)
        s += rt.assistant(rt.gen(f"answer_{i}", max_tokens=48, temperature=0))


def main():
    backend = rt.RuntimeEndpoint(sys.argv[1]) if len(sys.argv) > 1 else rt.Runtime()
    try:
        state = chat.run(questions=["What is the capital of France?", "What famous tower is in that city?"],
                         backend=backend)
        for message in state.messages():
            print(f"{message['role']}: {message['content']}")
        meta = state.get_meta_info("answer_1")
        print(f"turn 2: {meta['cached_tokens']} of {meta['prompt_tokens']} prompt tokens from the cache")
    finally:
        backend.shutdown()


if __name__ == "__main__":
    main()
