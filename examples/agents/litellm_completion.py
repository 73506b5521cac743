"""LiteLLM on Radixflow: the `hosted_vllm/` and `openai/` providers, with a response format.

    python examples/agents/litellm_completion.py
"""

import os

from pydantic import BaseModel

from runtime.integrations.local_server import LocalServer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # the bundled price list: no download
import litellm  # noqa: E402


class Person(BaseModel):
    name: str
    age: int


def main():
    with LocalServer() as server:
        messages = [{"role": "user", "content": "Alice is 30 years old. Extract the person."}]
        for provider in ("hosted_vllm", "openai"):
            reply = litellm.completion(model=f"{provider}/{server.model}", api_base=server.openai_base_url,
                                       api_key="-", messages=messages, max_tokens=64, temperature=0,
                                       response_format=Person)
            print(f"{provider}:", repr(Person.model_validate_json(reply.choices[0].message.content)))


if __name__ == "__main__":
    main()
