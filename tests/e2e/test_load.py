"""Many concurrent streaming clients; clients that disconnect free their KV."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

NUM_STREAMS = 200
NUM_DISCONNECTS = 50


def assert_kv_free(info: dict) -> None:
    free = info["available_tokens"] + info.get("evictable_tokens", 0)
    assert free == info["max_total_tokens"], info
    assert info["running"] == 0 and info["waiting"] == 0, info


def test_200_concurrent_streams(server):
    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, str | None]:
        body = {"messages": [{"role": "user", "content": f"request {i}"}], "max_tokens": 4, "stream": True,
                "temperature": 0}
        text, finish = "", None
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                text += choice["delta"].get("content") or ""
                finish = choice["finish_reason"] or finish
        return text, finish

    async def run():
        limits = httpx.Limits(max_connections=NUM_STREAMS + 10)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(NUM_STREAMS)))

    start = time.time()
    results = asyncio.run(run())
    assert len(results) == NUM_STREAMS
    assert all(finish in ("length", "stop") for _, finish in results)
    print(f"{NUM_STREAMS} streams in {time.time() - start:.1f}s")
    assert_kv_free(server.wait_idle())


def test_disconnects_abort_and_free(server):
    """Clients that leave mid-stream (and mid-wait, non-streaming) are aborted."""

    async def leave_after_first_token(client: httpx.AsyncClient, i: int) -> None:
        body = {"text": f"disconnect {i}", "stream": True,
                "sampling_params": {"max_new_tokens": 1500, "ignore_eos": True}}
        async with client.stream("POST", "/generate", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    return  # closes the connection mid-stream

    async def leave_while_waiting(i: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=1.5) as client:
            body = {"messages": [{"role": "user", "content": f"wait {i}"}], "max_tokens": 1500, "ignore_eos": True}
            try:
                await client.post("/v1/chat/completions", json=body)
            except httpx.TimeoutException:
                pass

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=NUM_DISCONNECTS + 5)) as client:
            await asyncio.gather(*(leave_after_first_token(client, i) for i in range(NUM_DISCONNECTS)),
                                 *(leave_while_waiting(i) for i in range(5)))

    asyncio.run(run())
    # 55 requests of 1500 tokens would take minutes; aborted, the engine idles within seconds
    assert_kv_free(server.wait_idle(timeout=30))
    free_after = server.info()
    assert free_after["max_total_tokens"] == 24576
