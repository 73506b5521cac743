"""Errors and limits: OpenAI-shaped 4xx bodies, API keys, body size, overload."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.e2e.harness import API_KEY, MODEL

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


def assert_error(r: httpx.Response, status: int, *words: str, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    for word in words:
        assert word in err["message"], err
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("body,param", [
    ({"messages": USER, "temperature": -1}, "temperature"),
    ({"messages": USER, "top_p": 0}, "top_p"),
    ({"messages": USER, "n": 0}, "n"),
    ({"messages": USER, "max_tokens": -5}, "max_tokens"),
    ({"messages": USER, "top_logprobs": 50}, "top_logprobs"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, None),
    ({"messages": USER, "stop": ["ok", ""]}, "stop"),
    ({"messages": USER, "logit_bias": {"5": 1.0}}, "logit_bias"),
    ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
])
def test_invalid_parameters(http, body, param):
    assert_error(http.post(CHAT, json={"max_tokens": 2, **body}), 400, param=param)


def test_engine_validation_is_400(http):
    # the engine's own validation (SGLang names) surfaces as a 400 naming the field
    r = http.post("/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 2, "top_k": -7}})
    assert_error(r, 400, "top_k")
    r = http.post("/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 2, "bogus": 1}})
    assert_error(r, 400, "bogus")
    assert_error(http.post("/generate", json={"input_ids": [10**9]}), 400, "vocabulary")


def test_malformed_bodies(http):
    assert_error(http.post(CHAT, content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON")
    assert_error(http.post(CHAT, json=[1, 2, 3]), 400)
    assert_error(http.post(CHAT, json={"messages": "hello"}), 400)
    assert_error(http.post("/generate", json={"text": 5}), 400)
    assert_error(http.post(CHAT, json={"messages": [{"role": "user", "content": [{"type": "image_url"}]}],
                                       "max_tokens": 1}), 400, "text content")


def test_invalid_schema(http):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "not-a-type"}}}
    assert_error(http.post(CHAT, json={"messages": USER, "max_tokens": 2, "response_format": fmt}), 400, "schema")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": 12}}}]
    assert_error(http.post(CHAT, json={"messages": USER, "max_tokens": 2, "tools": tools}), 400,
                 param="tools[0].function.parameters")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    named = {"type": "function", "function": {"name": "g"}}
    assert_error(http.post(CHAT, json={"messages": USER, "max_tokens": 2, "tools": tools, "tool_choice": named}),
                 400, "g", param="tool_choice")


def test_prompt_too_long(http):
    long_text = "word " * 2100  # context is 2048
    err = assert_error(http.post(CHAT, json={"messages": [{"role": "user", "content": long_text}]}), 400, "2048")
    assert any(ch.isdigit() for ch in err["message"].replace("2048", ""))  # the prompt's length too
    assert_error(http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 5000}), 400, "2048",
                 param="max_tokens")
    assert_error(http.post("/generate", json={"text": long_text}), 400, "context length")


def test_unknown_model(http):
    assert_error(http.post(CHAT, json={"model": "gpt-9", "messages": USER, "max_tokens": 1}), 404, "gpt-9",
                 param="model")
    assert http.get("/v1/models/gpt-9").status_code == 404
    assert http.post(CHAT, json={"model": MODEL, "messages": USER, "max_tokens": 1}).status_code == 200


def test_unknown_route_and_method(http):
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get(CHAT), 405)


def test_body_too_large(http):
    big = "x" * (17 * 1024 * 1024)
    assert_error(http.post("/generate", json={"text": big}), 413, "limit")


def test_api_key(guarded_server):
    url = guarded_server.url
    assert httpx.get(f"{url}/health").status_code == 200  # open
    for method, path in [("GET", "/v1/models"), ("POST", CHAT), ("POST", "/generate"), ("GET", "/metrics"),
                         ("GET", "/get_model_info"), ("GET", "/get_server_info"), ("POST", "/flush_cache"),
                         ("GET", "/health_generate"), ("POST", "/tokenize"), ("GET", "/openapi.json")]:
        assert_error(httpx.request(method, f"{url}{path}", json={}), 401)
        assert_error(httpx.request(method, f"{url}{path}", json={}, headers={"Authorization": "Bearer nope"}), 401)
    ok = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    from openai import AuthenticationError, OpenAI

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    r = OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0).chat.completions.create(
        model=MODEL, messages=USER, max_tokens=2)
    assert r.choices[0].message is not None


def test_overload_503_with_retry_after(guarded_server):
    """max_running 2 + max_queued 2: a 5th concurrent request is refused, not queued."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"messages": USER, "max_tokens": 8, "ignore_eos": True, "stream": True}

    async def hold(client: httpx.AsyncClient, started: asyncio.Event):
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            started.set()
            async for _ in r.aiter_lines():
                pass

    async def run():
        async with httpx.AsyncClient(base_url=guarded_server.url, headers=headers, timeout=120) as client:
            events = [asyncio.Event() for _ in range(4)]
            holders = [asyncio.create_task(hold(client, e)) for e in events]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
            extra = await client.post("/v1/chat/completions", json={**body, "stream": False})
            await asyncio.gather(*holders)
            return extra

    r = asyncio.run(run())
    assert_error(r, 503, "capacity")
    assert r.headers["retry-after"] == "1"
    guarded_server.wait_idle()
