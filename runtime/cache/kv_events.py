"""KV-cache events in vLLM's wire format (`--kv-events-endpoint`), so routers that follow
replicas' caches by these events (llm-d's KV-cache indexer, Dynamo's KV router, SGLang's
model gateway) can follow ours.

The radix cache logs what happens to its pages (RadixCache.event_log, plain tuples):
  ("stored", page hashes, parent page hash or None, token ids)   a new edge of the tree
  ("removed", page hashes)                                       an evicted leaf
  ("cleared",)                                                   the whole tree reset
A page is a "block" of `page_size` tokens and its hash the chained xxh3 page hash
(page_hash.py): splitting an edge keeps every page's hash, so splits log nothing. After
each engine step the log is published as one KVEventBatch: a ZMQ PUB multipart message
(topic, sequence number as 8 bytes big-endian, msgpack payload) whose payload is
[ts, [event, ...]], each event an array tagged with its class name, as vLLM encodes
them with msgspec (array_like, tag=True).

Needs msgspec and pyzmq (`pip install radixflow[kv-events]`), imported only when enabled.
"""

from __future__ import annotations

import time

import msgspec


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list
    data_parallel_rank: int | None = None  # omitted when None (older decoders have no such field)


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    """An event's array starts with its tag: the class name."""


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]  # every block's tokens, in order
    block_size: int
    lora_id: int | None
    medium: str | None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


def to_events(log: list[tuple], page_size: int) -> list[KVCacheEvent]:
    """RadixCache.event_log entries -> vLLM events."""
    events: list[KVCacheEvent] = []
    for entry in log:
        if entry[0] == "stored":
            _, hashes, parent, token_ids = entry
            events.append(BlockStored(list(hashes), parent, list(token_ids), page_size, None, None))
        elif entry[0] == "removed":
            events.append(BlockRemoved(list(entry[1]), None))
        else:
            events.append(AllBlocksCleared())
    return events


class KVEventPublisher:
    """Publishes batches on a ZMQ PUB socket bound at `endpoint` (e.g. tcp://*:5557)."""

    def __init__(self, endpoint: str, topic: str = "", page_size: int = 1) -> None:
        import zmq

        self.socket = zmq.Context.instance().socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as e:
            self.socket.close()
            raise ValueError(f"--kv-events-endpoint {endpoint!r}: cannot bind: {e}") from None
        self.topic, self.page_size, self.seq = topic.encode(), page_size, 0
        self.encoder = msgspec.msgpack.Encoder()

    def publish(self, log: list[tuple]) -> None:
        batch = KVEventBatch(ts=time.time(), events=to_events(log, self.page_size))
        self.socket.send_multipart((self.topic, self.seq.to_bytes(8, "big"), self.encoder.encode(batch)))
        self.seq += 1

    def close(self) -> None:
        self.socket.close()
