"""`RuntimeEndpoint`: a running server's SGLang-native API (`/generate`, `/tokenize`,
`/get_model_info`), ours or SGLang's. A server error raises `RuntimeError` with the
server's own message."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx

from runtime.chat_roles import ChatRoles
from runtime.lang.backends.base import SCORE_PARAMS, Backend
from runtime.tool_calls.parsers import ToolParser, get_parser


class RuntimeEndpoint(Backend):
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.model_info = self._post_or_get("GET", "/get_model_info")
        self._roles: ChatRoles | None = None

    def shutdown(self) -> None:
        self.client.close()

    def _post_or_get(self, method: str, path: str, body: dict | None = None):
        r = self.client.request(method, path, json=body)
        if r.status_code >= 400:
            raise RuntimeError(f"{self.base_url}{path} answered {r.status_code}: {_error_message(r)}")
        return r.json()

    def chat_roles(self) -> ChatRoles:
        if self._roles is None:
            roles = self.model_info.get("chat_roles")
            if roles is None:
                raise RuntimeError(f"{self.base_url} does not publish its chat roles (/get_model_info has no "
                                   f"'chat_roles'); role blocks need a radixflow server")
            self._roles = ChatRoles.from_dict(roles)
        return self._roles

    def tool_parser(self) -> ToolParser:
        name = self.model_info.get("tool_call_parser")
        if name is None:
            raise RuntimeError(f"{self.base_url} does not name its tool-call parser (/get_model_info has no "
                               f"'tool_call_parser'); tools in programs need a radixflow server")
        return get_parser(name)

    def render_chat(self, messages: list[dict], tools: list[dict] | None) -> str:
        body = {"messages": messages, "tools": tools, "add_generation_prompt": False}
        return self._post_or_get("POST", "/tokenize", body)["prompt"]

    def generate(self, prompt: str, sampling_params: dict, options: dict) -> list[tuple[str, dict]]:
        out = self._post_or_get("POST", "/generate", {"text": prompt, "sampling_params": sampling_params, **options})
        return [(r["text"], r["meta_info"]) for r in (out if isinstance(out, list) else [out])]

    def generate_stream(self, prompt: str, sampling_params: dict, options: dict) -> Iterator[tuple[str, dict]]:
        body = {"text": prompt, "sampling_params": sampling_params, "stream": True, **options}
        sent = 0
        with self.client.stream("POST", "/generate", json=body) as r:
            if r.status_code >= 400:
                r.read()
                raise RuntimeError(f"{self.base_url}/generate answered {r.status_code}: {_error_message(r)}")
            for line in r.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data:"):])
                if "error" in chunk:
                    raise RuntimeError(f"{self.base_url}/generate failed: {chunk['error'].get('message')}")
                text = chunk["text"]
                yield text[sent:], chunk["meta_info"]
                sent = len(text)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self._post_or_get("POST", "/tokenize", {"prompt": texts})["tokens"]

    def prompt_logprobs(self, input_ids: list[list[int]], start: int) -> list[list]:
        results = self._post_or_get("POST", "/generate", {
            "input_ids": input_ids, "sampling_params": [SCORE_PARAMS] * len(input_ids), "return_logprob": True,
            "logprob_start_len": start})
        return [r["meta_info"]["input_token_logprobs"] for r in results]


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("message", str(error)) if isinstance(error, dict) else str(body)[:500]
