"""Tree of thought with fork: several ideas sampled from one shared prefix (prefilled
once; every branch reads it from the cache), then a choice among them by select.

    python examples/tree_of_thought.py
"""

import runtime as rt


@rt.function
def tips(s, topic, num_branches=3):
    s += rt.system("You are a concise coach.")
    s += rt.user(f"Give me one tip about {topic}.")
    forks = s.fork(num_branches)
    forks += rt.assistant(rt.gen("tip", max_tokens=24, temperature=0.8, top_p=0.95))
    forks.join()
    listing = "\n".join(f"{i + 1}. {tip.strip()}" for i, tip in enumerate(s["tip"]))
    s += rt.user(f"Which of these tips is best?\n{listing}\nAnswer with its number.")
    s += rt.assistant("The best tip is number " + rt.select("best", [str(i + 1) for i in range(num_branches)]))


def main():
    with rt.Runtime() as backend:
        state = tips.run(topic="sleeping well", backend=backend)
        for i, tip in enumerate(state["tip"]):
            print(f"{i + 1}. {tip.strip()}")
        print("best:", state["best"])


if __name__ == "__main__":
    main()
