"""Two engine replicas of the tiny model on Ray Serve behind our API (runtime/server/ray_serve.py):
a conversation's later turns land on the replica holding its prefix (cached_tokens), unrelated
prompts spread over both, a session stays on its replica, bad input is still a 400."""

import collections
import concurrent.futures

import httpx
import openai
import pytest
import ray
from ray import serve

from runtime.demo.checkpoint import demo_model_path
from runtime.engine.process import free_port
from runtime.server import ray_serve
from runtime.server.state import ServerSettings
from tests.helpers import random_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_url():
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    options = {"model_path": str(demo_model_path("qwen2", "tiny", "float32")), "max_total_tokens": 8192}
    ray_serve.run(options, ServerSettings(port=port, served_model_name="tiny"), num_replicas=2, blocking=False)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_path("qwen2", "tiny", "float32"))


def words(tokenizer, seed: int, n: int) -> str:
    return tokenizer.decode(random_prompts(lens=[n], seed=seed, vocab=20_000)[0])


def native(base_url: str, text: str, headers: dict | None = None, **fields) -> dict:
    body = {"text": text, "sampling_params": {"max_new_tokens": 4, "temperature": 0}, **fields}
    reply = httpx.post(f"{base_url}/generate", json=body, headers=headers, timeout=120)
    reply.raise_for_status()
    return reply.json()["meta_info"]


def test_later_turns_of_each_conversation_hit_the_replica_holding_their_prefix(base_url, tokenizer):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none")
    # 3 (odd) conversations taking turns: round robin would move each one every turn
    conversations = [[{"role": "system", "content": words(tokenizer, seed, 200)}] for seed in range(3)]
    for turn in range(3):
        for c, messages in enumerate(conversations):
            messages.append({"role": "user", "content": f"turn {turn} of conversation {c}: go on"})
            reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8,
                                                   temperature=0)
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
            usage = reply.usage
            if turn == 0:
                continue
            cached = usage.prompt_tokens_details.cached_tokens
            assert cached >= 0.8 * usage.prompt_tokens, (
                f"conversation {c} turn {turn}: {cached} of {usage.prompt_tokens} prompt tokens cached: "
                f"routed away from its prefix")


def test_unrelated_prompts_are_spread_over_both_replicas(base_url, tokenizer):
    texts = [words(tokenizer, 100 + i, 40) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replicas = list(pool.map(lambda t: native(base_url, t)["replica"], texts))
    counts = collections.Counter(replicas)
    assert len(counts) == 2 and min(counts.values()) >= 2, counts


def test_a_session_stays_on_its_replica(base_url, tokenizer):
    for session in ("alice", "bob"):
        seen = {native(base_url, words(tokenizer, 200 + i, 30), session_id=session)["replica"] for i in range(4)}
        assert len(seen) == 1, f"session {session} moved between replicas: {seen}"
    # the header names a session too
    seen = {native(base_url, words(tokenizer, 300 + i, 30), headers={"X-Session-ID": "carol"})["replica"]
            for i in range(4)}
    assert len(seen) == 1, seen


def test_bad_input_is_still_a_400_through_ray(base_url):
    reply = httpx.post(f"{base_url}/v1/completions", timeout=60,
                       json={"model": "tiny", "prompt": "hi", "max_tokens": 10_000_000})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"
