"""Radix cache: unit cases plus a hypothesis state machine that checks slot
ownership, lock protection and size accounting after every operation."""

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runtime.cache.kv_pool import KVPool
from runtime.cache.page_hash import prefix_page_hashes
from runtime.cache.radix_cache import RadixCache


def make(num_slots=64, page_size=1):
    pool = KVPool(num_layers=1, num_slots=num_slots, num_kv_heads=1, head_dim=2, dtype=torch.float32,
                  device="cpu", page_size=page_size)
    return pool, RadixCache(pool, page_size=page_size)


def test_match_insert_split_and_duplicates():
    pool, cache = make()
    slots = pool.allocate(0, 6, None)
    assert cache.insert([1, 2, 3, 4, 5, 6], slots) == 0
    m = cache.match_prefix([1, 2, 3, 9])
    assert m.prefix_len == 3 and m.slots.tolist() == slots[:3].tolist()
    other = pool.allocate(0, 4, None)
    # [1,2,3] already cached: the caller's first 3 slots are duplicates
    assert cache.insert([1, 2, 3, 7], other) == 3
    assert cache.match_prefix([1, 2, 3, 7]).slots.tolist() == slots[:3].tolist() + [other[3].item()]
    assert cache.evictable_size() == 7


def test_lock_protects_from_eviction_and_lru_order():
    pool, cache = make()
    a, b = pool.allocate(0, 3, None), pool.allocate(0, 3, None)
    cache.insert([1, 1, 1], a)
    cache.insert([2, 2, 2], b)
    m = cache.match_prefix([1, 1, 1])
    cache.lock(m.node)
    assert cache.protected_size() == 3 and cache.evictable_size() == 3
    assert cache.evict(100) == 3  # only the unlocked branch goes
    assert cache.match_prefix([2, 2, 2]).prefix_len == 0
    assert cache.match_prefix([1, 1, 1]).prefix_len == 3
    cache.unlock(m.node)
    assert cache.evict(1) == 3 and cache.total_size() == 0


def test_namespaces_do_not_share():
    pool, cache = make()
    cache.insert([5, 6, 7], pool.allocate(0, 3, None), extra_key="tenant-a")
    assert cache.match_prefix([5, 6, 7], extra_key="tenant-b").prefix_len == 0
    assert cache.match_prefix([5, 6, 7]).prefix_len == 0
    assert cache.match_prefix([5, 6, 7], extra_key="tenant-a").prefix_len == 3


def test_page_aligned_keys():
    pool, cache = make(num_slots=64, page_size=4)
    slots = pool.allocate(0, 10, None)
    cache.cache_finished(list(range(10)), slots, None)
    assert cache.total_size() == 8  # the partial last page is freed, not cached
    assert pool.available_size() + cache.total_size() == pool.capacity
    assert cache.match_prefix(list(range(7))).prefix_len == 4
    assert cache.match_prefix(list(range(12))).prefix_len == 8


def test_lookup_page_hashes():
    pool, cache = make(num_slots=64, page_size=2)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    cache.insert(tokens, pool.allocate(0, 8, None), extra_key="t")
    assert cache.lookup_page_hashes(prefix_page_hashes(tokens, 2, "t")) == 4
    assert cache.lookup_page_hashes(prefix_page_hashes(tokens[:4] + [0, 0], 2, "t")) == 2
    assert cache.lookup_page_hashes(prefix_page_hashes(tokens, 2)) == 0  # other namespace
    cache.evict(2)  # evicts the whole leaf: the tree held one node
    assert cache.lookup_page_hashes(prefix_page_hashes(tokens, 2, "t")) == 0


class RadixMachine(RuleBasedStateMachine):
    """Requests are simulated the way the scheduler drives the cache: match + lock,
    allocate the rest, then cache_finished (insert, free duplicates, unlock)."""

    def __init__(self):
        super().__init__()
        self.pool, self.cache = make(num_slots=48)
        self.live = {}  # id -> (tokens, slots, locked node, prefix_len)
        self.next_id = 0
        self.inserted: list[list[int]] = []

    @rule(tokens=st.lists(st.integers(0, 3), min_size=1, max_size=10))
    def start_request(self, tokens):
        m = self.cache.match_prefix(tokens)
        self.cache.lock(m.node)
        need = len(tokens) - m.prefix_len
        if self.pool.available_size() < need:
            self.cache.evict(need - self.pool.available_size())
        if self.pool.available_size() < need:
            self.cache.unlock(m.node)
            return
        own = self.pool.allocate(m.prefix_len, need, None)
        self.live[self.next_id] = (tokens, torch.cat([m.slots, own]), m.node, m.prefix_len)
        self.next_id += 1

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def finish_request(self, data):
        rid = data.draw(st.sampled_from(sorted(self.live)))
        tokens, slots, node, _ = self.live.pop(rid)
        self.cache.cache_finished(tokens, slots, node)
        self.inserted.append(tokens)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def checkpoint_request(self, data):
        """cache_unfinished, as between chunks of a chunked prefill."""
        rid = data.draw(st.sampled_from(sorted(self.live)))
        tokens, slots, node, _ = self.live[rid]
        m = self.cache.cache_unfinished(tokens, slots, node)
        slots = slots.clone()
        slots[:m.prefix_len] = m.slots
        self.live[rid] = (tokens, slots, m.node, m.prefix_len)
        self.inserted.append(tokens)

    @rule(n=st.integers(1, 20))
    def evict(self, n):
        self.cache.evict(n)

    @rule(tokens=st.lists(st.integers(0, 3), min_size=1, max_size=10))
    def match_is_longest(self, tokens):
        got = self.cache.match_prefix(tokens).prefix_len
        # longest common prefix with anything still cached: walk the tree directly
        best = 0
        for root in self.cache.roots.values():
            stack = [(root, 0)]
            while stack:
                node, depth = stack.pop()
                path_ok = depth <= len(tokens)
                if path_ok:
                    best = max(best, depth)
                for child in node.children.values():
                    n = 0
                    while n < len(child.key) and depth + n < len(tokens) and child.key[n] == tokens[depth + n]:
                        n += 1
                    if n == len(child.key):
                        stack.append((child, depth + n))
                    else:
                        best = max(best, depth + n)
        assert got == best

    @invariant()
    def each_slot_has_one_owner(self):
        free = self.pool.free_slot_ids().tolist()
        in_tree = []
        for node in self.cache._nodes():
            in_tree += node.value.tolist()
        owned = []
        for tokens, slots, node, prefix_len in self.live.values():
            owned += slots[prefix_len:].tolist()
        everything = free + in_tree + owned
        assert len(everything) == len(set(everything)), "a slot has two owners"
        assert sorted(everything) == list(range(1, self.pool.num_slots)), "a slot was lost"

    @invariant()
    def sizes_match_recomputed(self):
        evictable = protected = 0
        for node in self.cache._nodes():
            if node.parent is None:
                continue
            if node.lock_ref == 0:
                evictable += len(node.key)
            else:
                protected += len(node.key)
            assert node.value.numel() == len(node.key)
            assert node.lock_ref == sum(c.lock_ref for c in node.children.values()) + sum(
                1 for _, _, n, _ in self.live.values() if n is node)
        assert self.cache.evictable_size() == evictable
        assert self.cache.protected_size() == protected

    @invariant()
    def page_hashes_name_their_prefix(self):
        indexed = 0
        for root in self.cache.roots.values():
            stack = [(root, [])]
            while stack:
                node, tokens = stack.pop()
                if node.parent is not None:
                    expected = prefix_page_hashes(tokens)[-len(node.key):]
                    assert node.page_hashes == expected
                    assert all(self.cache.hash_index[h] is node for h in expected)
                    indexed += len(expected)
                stack.extend((c, tokens + c.key) for c in node.children.values())
        assert indexed == len(self.cache.hash_index)

    @invariant()
    def locked_prefixes_survive(self):
        for tokens, slots, node, prefix_len in self.live.values():
            m = self.cache.match_prefix(tokens[:prefix_len])
            assert m.prefix_len == prefix_len
            assert m.slots.tolist() == slots[:prefix_len].tolist()


RadixMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRadixMachine = RadixMachine.TestCase
