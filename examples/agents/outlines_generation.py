"""outlines 1.x on Radixflow: JSON-schema and regex generation through its SGLang, vLLM and
OpenAI clients (each sends the constraint its server expects; Radixflow enforces all three).

    python examples/agents/outlines_generation.py
"""

import openai
import outlines
from outlines.types import Regex
from pydantic import BaseModel

from runtime.integrations.local_server import LocalServer


class Person(BaseModel):
    name: str
    age: int


def main():
    with LocalServer() as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="-")
        for name, make in (("sglang", outlines.from_sglang), ("vllm", outlines.from_vllm),
                           ("openai", outlines.from_openai)):
            model = make(client, server.model)
            print(f"{name} json:", model("Alice is 30 years old. Extract the person.", Person, max_tokens=64))
            if name != "openai":  # OpenAI's API has no regex constraint
                print(f"{name} regex:", model("A three-digit number:", Regex(r"[0-9]{3}"), max_tokens=8))


if __name__ == "__main__":
    main()
