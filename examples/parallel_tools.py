"""A parallel tool-calling agent: one forked branch per city writes its tool call (the
branches are decoded together and read the conversation so far from the prefix cache),
the tools run at the same time (a thread pool: they sleep like slow web APIs), and the
model answers from all the results.

    python examples/parallel_tools.py
"""

import time
from concurrent.futures import ThreadPoolExecutor

import runtime as rt

WEATHER = {"paris": (22, "sunny"), "london": (16, "rainy"), "tokyo": (27, "cloudy")}


def get_weather(city: str) -> str:
    """Get the current weather in a given city.

    Args:
        city: The city name
    """
    time.sleep(0.5)  # a slow remote API
    temperature, sky = WEATHER.get(city.lower().strip(), (None, None))
    return f"{city}: {temperature} degrees Celsius, {sky}." if sky else f"{city}: unknown city."


@rt.function
def weather_report(s, cities):
    s += rt.system("You are a weather assistant.")
    forks = s.fork(len(cities))
    forks += lambda i: rt.user(f"Get the weather in {cities[i]}.") + rt.assistant(
        rt.gen("call", tools=[get_weather], tool_choice="get_weather", max_tokens=32, temperature=0))
    calls = [call for branch in forks for call in branch["call"]]
    with ThreadPoolExecutor() as pool:  # every tool call at once
        results = list(pool.map(lambda call: get_weather(**call["arguments"]), calls))
    s["calls"] = calls
    s += rt.user(f"What is the weather like in {', '.join(cities)}? Here are the reports:\n" + "\n".join(results))
    s += rt.assistant(rt.gen("answer", max_tokens=64, temperature=0))


def main():
    with rt.Runtime() as backend:
        start = time.perf_counter()
        state = weather_report.run(cities=["Paris", "London", "Tokyo"], backend=backend)
        for call in state["calls"]:
            print(f"call get_weather({call['arguments']})")
        print("answer:", state["answer"].strip())
        print(f"{len(state['calls'])} calls, {time.perf_counter() - start:.1f} s in all")


if __name__ == "__main__":
    main()
