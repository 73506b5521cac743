"""Many programs at once, from asyncio: `run_async` (and `run_batch` from plain code).

    python examples/async_batch.py
"""

import asyncio

import runtime as rt


@rt.function
def few_shot(s, question):
    s += "Answer each question with one word.\n"
    s += "Q: What is the capital of Germany?\nA: Berlin\n"
    s += "Q: " + question + "\nA:" + rt.gen("answer", max_tokens=8, stop="\n", temperature=0)


async def ask_all(backend, countries):
    states = await asyncio.gather(*[few_shot.run_async(question=f"What is the capital of {c}?", backend=backend)
                                    for c in countries])
    return [s["answer"].strip() for s in states]


def main():
    countries = ["France", "Italy", "Spain", "Japan"]
    with rt.Runtime() as backend:
        print(dict(zip(countries, asyncio.run(ask_all(backend, countries)))))
        batch = few_shot.run_batch([{"question": f"What is the capital of {c}?"} for c in countries],
                                   backend=backend)
        print([s["answer"].strip() for s in batch])


if __name__ == "__main__":
    main()
