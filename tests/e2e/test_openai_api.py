"""OpenAI-compatible endpoints through the official `openai` client (sync and async)."""

from __future__ import annotations

import asyncio

from tests.e2e.harness import MODEL

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_sync(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5, temperature=0)
    assert r.object == "chat.completion" and r.id
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 5 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_async_concurrent(aclient):
    async def run():
        calls = [aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"hi {i}"}],
                                                 max_tokens=4) for i in range(4)]
        return await asyncio.gather(*calls)

    for r in asyncio.run(run()):
        assert r.choices[0].message.content is not None


def test_greedy_and_seed_are_reproducible(client):
    kw = dict(model=MODEL, messages=MSGS, max_tokens=6)
    a = client.chat.completions.create(temperature=0, **kw).choices[0].message.content
    b = client.chat.completions.create(temperature=0, **kw).choices[0].message.content
    assert a == b
    c = client.chat.completions.create(temperature=1.0, seed=7, **kw).choices[0].message.content
    d = client.chat.completions.create(temperature=1.0, seed=7, **kw).choices[0].message.content
    assert c == d


def test_content_parts_and_developer_role(client):
    msgs = [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_completion_tokens=3)
    assert r.usage.completion_tokens <= 3


def test_stream_with_usage(client):
    stream = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["length"], ["stop"])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    full = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=6, temperature=0)
    assert text == full.choices[0].message.content
    assert usage_chunk.usage.completion_tokens == full.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == full.usage.prompt_tokens


def test_n3(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4, n=3, seed=1)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert 3 <= r.usage.completion_tokens <= 12
    stream = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4, n=3, stream=True,
                                            stream_options={"include_usage": True})
    done = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert done == {0, 1, 2}


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the top token
    assert "".join(e.token for e in content) == r.choices[0].message.content
    stream = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4, temperature=0, logprobs=True,
                                            stream=True)
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0, logprobs=2)
    assert r.object == "text_completion"
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens
    assert "".join(lp.tokens) == r.choices[0].text
    batch = client.completions.create(model=MODEL, prompt=["a b", "c d"], max_tokens=2, n=2)
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
    echo = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=2, echo=True, logprobs=1)
    assert echo.choices[0].text.startswith("Hello there")
    lp = echo.choices[0].logprobs
    assert len(lp.tokens) == echo.usage.prompt_tokens + echo.usage.completion_tokens
    assert lp.token_logprobs[0] is None and "".join(lp.tokens) == echo.choices[0].text
    tokens = client.completions.create(model=MODEL, prompt=[9707, 1052], max_tokens=2)
    assert tokens.usage.prompt_tokens == 2
    chunks = list(client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == \
        client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0).choices[0].text


def test_stop_strings(client):
    full = client.completions.create(model=MODEL, prompt="Count: 1 2 3", max_tokens=8, temperature=0).choices[0]
    stop = full.text[3:5] if len(full.text) >= 5 else None
    if not stop or not stop.strip():
        return
    r = client.completions.create(model=MODEL, prompt="Count: 1 2 3", max_tokens=8, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and stop not in r.choices[0].text
    assert full.text.startswith(r.choices[0].text)


def test_cached_tokens_reported(client):
    msgs = [{"role": "user", "content": "A fairly long shared prefix for caching. " * 8}]
    client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1)
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1)
    assert r.usage.prompt_tokens_details.cached_tokens >= r.usage.prompt_tokens - 2
    salted = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1,
                                            extra_body={"cache_salt": "tenant-b"})
    assert salted.usage.prompt_tokens_details.cached_tokens == 0


def test_extras_and_penalties(client):
    r = client.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=4, presence_penalty=0.5, frequency_penalty=0.5, top_p=0.9,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "chat_template_kwargs": {"x": 1}})
    assert r.usage.completion_tokens <= 4


def test_tool_history_round_trip(client):
    """Assistant tool_calls + tool results in the history render and generate."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, tools=tools, max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    tokens = r.usage.prompt_tokens
    r2 = client.chat.completions.create(model=MODEL, messages=msgs, tools=tools, tool_choice="none", max_tokens=2)
    # tool_choice=none shows the model the same prompt as auto (no calls are parsed): an agent's
    # next step, with or without tools allowed, finds the whole prefix in the cache
    assert r2.usage.prompt_tokens == tokens and r2.usage.prompt_tokens_details.cached_tokens >= tokens - 1
    assert r2.choices[0].message.tool_calls is None
