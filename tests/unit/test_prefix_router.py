"""The replicas' prefix digest (RadixCache.prefix_digest) and PrefixAwareRouter's choices
(runtime/server/ray_serve.py), without a Ray cluster: replicas are stand-ins carrying the
fields the router reads (replica_id, routing_stats) and Ray's queue-length cache a dict."""

import random

import pytest
import torch

from runtime.cache.kv_pool import KVPool
from runtime.cache.radix_cache import RadixCache
from runtime.server.ray_serve import PrefixAwareRouter, block_hashes, block_pages


def cache_with(sequences, page_size=1, salt=None):
    pool = KVPool(num_layers=1, num_slots=4096, num_kv_heads=1, head_dim=2, dtype=torch.float32, device="cpu",
                  page_size=page_size)
    cache = RadixCache(pool, page_size=page_size)
    for seq in sequences:
        cache.insert(seq, pool.allocate(0, len(seq), None), extra_key=salt)
    return cache


@pytest.mark.parametrize("page_size", [1, 4, 16, 32])
def test_the_digest_holds_every_whole_block_of_every_cached_prefix(page_size):
    rng = random.Random(page_size)
    shared = [rng.randrange(1000) for _ in range(40)]
    seqs = [shared + [rng.randrange(1000) for _ in range(n)] for n in (0, 9, 70)] + [[5] * 100]
    cache = cache_with(seqs, page_size)
    digest = set(cache.prefix_digest(block_pages(page_size)))
    expected = set()
    for seq in seqs:
        aligned = seq[:len(seq) // page_size * page_size]  # the cache keeps whole pages
        expected |= set(block_hashes(aligned, page_size, None))
    assert digest == expected and digest
    # a salted namespace has its own chain
    salted = cache_with(seqs[:1], page_size, salt="tenant-a")
    assert set(salted.prefix_digest(block_pages(page_size))) == set(block_hashes(seqs[0], page_size, "tenant-a"))
    assert not set(salted.prefix_digest(block_pages(page_size))) & digest


class Replica:
    def __init__(self, name, cached=(), page_size=1):
        self.replica_id = name
        self.routing_stats = {"prefix_hashes": [h for seq in cached for h in block_hashes(seq, page_size, None)],
                              "page_size": page_size, "at": 1.0}


def router(policy="prefix", imbalance=4, load=None):
    r = object.__new__(PrefixAwareRouter)  # the routing logic alone: no Ray controller behind it
    r.initialize_state(policy=policy, imbalance_threshold=imbalance)
    r._replica_queue_len_cache = load if load is not None else {}
    return r


PROMPT = list(range(1000, 1100))


def names(ranked):
    return [r.replica_id for r in ranked]


def test_the_replica_holding_the_longest_prefix_comes_first():
    a, b, c = Replica("a", [PROMPT[:32]]), Replica("b", [PROMPT[:80]]), Replica("c")
    assert names(router().rank([a, b, c], {"input_ids": PROMPT}))[0] == "b"


def test_a_busy_preferred_replica_gives_way_to_the_least_loaded():
    a, b = Replica("a", [PROMPT]), Replica("b")
    assert names(router(load={"a": 3, "b": 0}).rank([a, b], {"input_ids": PROMPT}))[0] == "a"  # within 4
    assert names(router(load={"a": 5, "b": 0}).rank([a, b], {"input_ids": PROMPT})) == ["b", "a"]


def test_what_was_just_routed_counts_before_the_next_digest():
    a, b = Replica("a"), Replica("b")
    r = router()
    first = names(r.rank([a, b], {"input_ids": PROMPT}))[0]
    for _ in range(5):  # the next turns extend the prompt; no digest has reported it yet
        assert names(r.rank([a, b], {"input_ids": PROMPT + [7, 8, 9] * 10}))[0] == first


def test_unrelated_prompts_rotate_and_sessions_stick():
    a, b = Replica("a"), Replica("b")
    r = router()
    picks = [names(r.rank([a, b], {"input_ids": [i] * 40}))[0] for i in range(6)]
    assert picks.count("a") == picks.count("b") == 3
    sticky = {names(r.rank([a, b], {"input_ids": [100 + i] * 40, "session_id": "s1"}))[0] for i in range(6)}
    assert len(sticky) == 1


def test_a_session_moves_when_its_replica_is_overloaded():
    a, b = Replica("a"), Replica("b")
    load = {"a": 0, "b": 0}
    r = router(load=load)
    home = names(r.rank([a, b], {"input_ids": [1] * 40, "session_id": "s"}))[0]
    load[home] = 10
    assert names(r.rank([a, b], {"input_ids": [2] * 40, "session_id": "s"}))[0] != home


def test_round_robin_ignores_the_caches():
    a, b = Replica("a", [PROMPT]), Replica("b")
    r = router(policy="round_robin")
    assert [names(r.rank([a, b], {"input_ids": PROMPT}))[0] for _ in range(4)] == ["a", "b", "a", "b"]


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="routing policy must be one of"):
        router(policy="random")
