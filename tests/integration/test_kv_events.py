"""KV-cache events (`kv_events_endpoint`): the radix cache's log, and an engine publishing it
over ZMQ, decoded with a subscriber's own types in vLLM's format (those of vLLM's
examples/online_serving/kv_events_subscriber.py: every field required)."""

from __future__ import annotations

import time

import msgspec
import pytest
import torch
import zmq

import runtime
from runtime.cache.kv_events import to_events
from runtime.cache.kv_pool import KVPool
from runtime.cache.page_hash import prefix_page_hashes
from runtime.cache.radix_cache import RadixCache
from runtime.config import EngineConfig
from runtime.demo.checkpoint import demo_model_path
from runtime.engine.process import free_port


# ---- a subscriber's view of the wire format ---------------------------------------------
class SubscriberBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list


class SubscriberEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(SubscriberEvent):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None


class BlockRemoved(SubscriberEvent):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(SubscriberEvent):
    pass


class KVEventBatch(SubscriberBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


DECODER = msgspec.msgpack.Decoder(type=KVEventBatch)


# ---- the radix cache's log ----------------------------------------------------------------
def test_the_radix_cache_logs_stored_removed_and_cleared_pages():
    page = 2
    cache = RadixCache(KVPool(1, 64, 1, 4, torch.float32, "cpu", page_size=page), page_size=page)
    cache.event_log = []
    first, second = [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 9]
    cache.insert(first, cache.pool.allocate(0, 6, None))
    cache.insert(second, cache.pool.allocate(0, 6, None))  # splits first's edge after 4 tokens: no event for that
    stored = to_events(cache.event_log, page)
    assert [type(e).__name__ for e in stored] == ["BlockStored", "BlockStored"]
    assert stored[0].block_hashes == prefix_page_hashes(first, page) and stored[0].parent_block_hash is None
    assert stored[0].token_ids == first and stored[0].block_size == page
    # the second edge hangs under the shared pages: its parent is their last hash
    assert stored[1].block_hashes == prefix_page_hashes(second, page)[2:]
    assert stored[1].parent_block_hash == prefix_page_hashes(first, page)[1] and stored[1].token_ids == [9, 9]
    cache.event_log.clear()
    assert cache.evict(2) == 2  # the least recently used leaf: first's tail
    assert [(type(e).__name__, e.block_hashes) for e in to_events(cache.event_log, page)] == [
        ("BlockRemoved", prefix_page_hashes(first, page)[2:])]
    cache.reset()
    assert type(to_events(cache.event_log, page)[-1]).__name__ == "AllBlocksCleared"


# ---- an engine publishing them ----------------------------------------------------------------
def receive(sub, until, timeout_s: float = 30.0) -> list:
    """Decoded events until `until(events)` holds; checks the sequence numbers run on."""
    events, seqs, deadline = [], [], time.monotonic() + timeout_s
    while not until(events):
        assert time.monotonic() < deadline, f"no such events within {timeout_s} s: {events}"
        if sub.poll(200):
            topic, seq, payload = sub.recv_multipart()
            assert topic == b"kv"
            seqs.append(int.from_bytes(seq, "big"))
            events += DECODER.decode(payload).events
    assert seqs == sorted(seqs)
    return events


@pytest.fixture(scope="module")
def engine_and_subscriber():
    port = free_port()
    engine = runtime.Engine(str(demo_model_path("qwen2", "tiny", "float32")), max_total_tokens=4096,
                            kv_events_endpoint=f"tcp://127.0.0.1:{port}", kv_events_topic="kv")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv")
    sub.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.5)  # a SUB socket receives only what is published after it has joined
    yield engine, sub
    sub.close()
    engine.shutdown()


def test_an_engine_publishes_the_pages_a_request_leaves_cached(engine_and_subscriber):
    engine, sub = engine_and_subscriber
    prompt = list(range(100, 140))
    engine.generate(input_ids=prompt, sampling_params={"max_new_tokens": 4, "temperature": 0})
    events = receive(sub, lambda evs: any(isinstance(e, BlockStored) for e in evs))
    stored = [e for e in events if isinstance(e, BlockStored)]
    tokens = [t for e in stored for t in e.token_ids]
    assert tokens[:len(prompt)] == prompt  # the prompt, then (part of) the output
    assert [h for e in stored for h in e.block_hashes] == prefix_page_hashes(tokens)  # the router's own hashes
    assert stored[0].parent_block_hash is None and all(e.block_size == 1 for e in stored)
    engine.flush_cache()
    receive(sub, lambda evs: any(isinstance(e, AllBlocksCleared) for e in evs))


def test_events_without_the_radix_cache_are_refused():
    with pytest.raises(ValueError, match="cannot go with disable_radix_cache"):
        EngineConfig(kv_events_endpoint="tcp://127.0.0.1:5599", disable_radix_cache=True)
