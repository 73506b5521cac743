"""Radix-tree prefix cache over KV slot indices.

Each edge holds a run of token ids (a multiple of `page_size` long) and the slots
holding their KV. Requests in different `extra_key` namespaces (cache_salt) live
under different roots and never share. Invariants (checked by the stateful test):
- every cached slot is in exactly one node; a node's `value` has len(key) slots;
- `lock_ref` of a node = number of live locks on it or on a descendant;
- evictable_size = tokens in nodes with lock_ref == 0, protected_size = the rest;
- only leaves with lock_ref == 0 are evicted (LRU first); a parent left childless
  becomes an eviction candidate in turn.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Iterator

import torch

from runtime.cache.kv_pool import KVPool
from runtime.cache.page_hash import chain_page_hashes, namespace_seed
from runtime.cache.prefix_cache import PrefixCache, PrefixMatch

_clock = itertools.count()  # monotonic access stamps (deterministic, unlike time.time)


class Node:
    __slots__ = ("key", "value", "children", "parent", "lock_ref", "last_access", "depth", "page_hashes")

    def __init__(self, key: list[int], value: torch.Tensor, parent: "Node | None") -> None:
        self.key = key  # token ids on the edge from parent to this node
        self.value = value  # int64 [len(key)] KV slots
        self.children: dict = {}  # child key head (first page as a tuple) -> Node
        self.parent = parent
        self.lock_ref = 0
        self.last_access = next(_clock)
        self.depth = (parent.depth if parent else 0) + len(key)  # tokens from the root to this node's end
        self.page_hashes: list[int] = []  # chained page hashes of this edge (see page_hash.py)

    def __lt__(self, other: "Node") -> bool:  # heap order: least recently used first
        return self.last_access < other.last_access


class RadixCache(PrefixCache):
    def __init__(self, pool: KVPool, page_size: int = 1) -> None:
        super().__init__(pool, page_size)
        # what happened to the pages, for KV events (kv_events.py); None: not kept
        self.event_log: list[tuple] | None = None
        self.reset_tree()

    # ---- structure helpers ---------------------------------------------------
    def reset_tree(self) -> None:
        self.roots: dict[str | None, Node] = {}
        self.hash_index: dict[int, Node] = {}  # page hash -> node holding that page
        self._evictable = 0
        self._protected = 0

    def _root(self, extra_key: str | None, create: bool) -> Node | None:
        root = self.roots.get(extra_key)
        if root is None and create:
            root = self.roots[extra_key] = Node([], torch.empty(0, dtype=torch.int64), None)
            root.lock_ref = 1  # roots are never evicted
            root.page_hashes = [namespace_seed(extra_key)]  # chain seed, not a page
        return root

    def _head(self, key: list[int], start: int = 0) -> tuple[int, ...]:
        return tuple(key[start:start + self.page_size])

    def _aligned(self, n: int) -> int:
        return n - n % self.page_size

    def _common_len(self, a: list[int], a_start: int, b: list[int]) -> int:
        """Length of the common prefix of a[a_start:] and b, rounded down to whole pages."""
        n = min(len(a) - a_start, len(b))
        i = 0
        while i < n and a[a_start + i] == b[i]:
            i += 1
        return self._aligned(i)

    def _split(self, node: Node, at: int) -> Node:
        """Split node's edge after `at` tokens; returns the new upper node."""
        upper = Node(node.key[:at], node.value[:at], node.parent)
        upper.lock_ref = node.lock_ref
        upper.last_access = node.last_access
        upper.page_hashes = node.page_hashes[:at // self.page_size]
        upper.children = {self._head(node.key, at): node}
        node.parent.children[self._head(node.key)] = upper
        node.key, node.value = node.key[at:], node.value[at:]
        node.page_hashes = node.page_hashes[at // self.page_size:]
        node.parent = upper
        for h in upper.page_hashes:
            self.hash_index[h] = upper
        return upper

    # ---- PrefixCache interface --------------------------------------------------
    def match_prefix(self, token_ids: list[int], extra_key: str | None = None) -> PrefixMatch:
        node = self._root(extra_key, create=True)
        token_ids = token_ids[:self._aligned(len(token_ids))]
        values, pos = [], 0
        while pos < len(token_ids):
            child = node.children.get(self._head(token_ids, pos))
            if child is None:
                break
            n = self._common_len(token_ids, pos, child.key)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = next(_clock)
            values.append(child.value)
            node, pos = child, pos + n
        slots = torch.cat(values) if values else torch.empty(0, dtype=torch.int64)
        return PrefixMatch(slots, node)

    def lock(self, node: Node | None) -> None:
        while node is not None:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Node | None) -> None:
        while node is not None:
            if node.lock_ref == 1 and node.parent is not None:
                self._evictable += len(node.key)
                self._protected -= len(node.key)
            node.lock_ref -= 1
            node = node.parent

    def insert(self, token_ids: list[int], slots: torch.Tensor, extra_key: str | None = None) -> int:
        """Add token_ids (page-aligned length) with their slots. Returns how many leading
        tokens were already cached: the caller's slots for those are duplicates."""
        node = self._root(extra_key, create=True)
        pos = 0
        while pos < len(token_ids):
            child = node.children.get(self._head(token_ids, pos))
            if child is None:
                leaf = Node(list(token_ids[pos:]), slots[pos:].clone(), node)
                node.children[self._head(token_ids, pos)] = leaf
                self._evictable += len(leaf.key)
                self._on_new_node(leaf)
                return pos
            n = self._common_len(token_ids, pos, child.key)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = next(_clock)
            node, pos = child, pos + n
        return pos

    def _on_new_node(self, node: Node) -> None:
        node.page_hashes = chain_page_hashes(node.key, self.page_size, node.parent.page_hashes[-1])
        for h in node.page_hashes:
            self.hash_index[h] = node
        if self.event_log is not None and node.page_hashes:
            parent = node.parent.page_hashes[-1] if node.parent.parent is not None else None
            self.event_log.append(("stored", node.page_hashes, parent, node.key))

    def prefix_digest(self, block_pages: int) -> list[int]:
        """The hash of each cached page that ends a prefix of a multiple of `block_pages` pages."""
        out = []
        for node in self._nodes():
            if node.parent is None:
                continue
            first_page = (node.depth - len(node.key)) // self.page_size  # pages above this edge
            out += [h for i, h in enumerate(node.page_hashes) if (first_page + i + 1) % block_pages == 0]
        return out

    def lookup_page_hashes(self, hashes: list[int]) -> int:
        """How many leading pages of a prefix (given as `prefix_page_hashes`) are cached;
        multiply by page_size for tokens."""
        n = 0
        for h in hashes:
            if h not in self.hash_index:
                break
            n += 1
        return n

    def cache_finished(self, token_ids, slots, locked_node, extra_key=None) -> None:
        owned_from = locked_node.depth if locked_node is not None else 0
        aligned = self._aligned(len(token_ids))
        present = self.insert(list(token_ids[:aligned]), slots[:aligned], extra_key)
        if present > owned_from:  # computed again what the tree already had
            self.pool.free(slots[owned_from:present])
        self.pool.free(slots[aligned:])
        self.unlock(locked_node)

    def cache_unfinished(self, token_ids, slots, locked_node, extra_key=None) -> PrefixMatch:
        owned_from = locked_node.depth if locked_node is not None else 0
        aligned = self._aligned(len(token_ids))
        present = self.insert(list(token_ids[:aligned]), slots[:aligned], extra_key)
        if present > owned_from:
            self.pool.free(slots[owned_from:present])
        match = self.match_prefix(list(token_ids[:aligned]), extra_key)
        self.lock(match.node)
        self.unlock(locked_node)
        return match

    def evict(self, num_tokens: int) -> int:
        heap = [n for n in self._nodes() if not n.children and n.lock_ref == 0 and n.parent is not None]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            leaf = heapq.heappop(heap)
            self.pool.free(leaf.value)
            freed += len(leaf.key)
            self._evictable -= len(leaf.key)
            parent = leaf.parent
            del parent.children[self._head(leaf.key)]
            for h in leaf.page_hashes:
                self.hash_index.pop(h, None)
            if self.event_log is not None and leaf.page_hashes:
                self.event_log.append(("removed", leaf.page_hashes))
            if not parent.children and parent.lock_ref == 0 and parent.parent is not None:
                heapq.heappush(heap, parent)
        return freed

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    def reset(self) -> None:
        for node in self._nodes():
            if node.parent is not None:
                self.pool.free(node.value)
        self.reset_tree()
        if self.event_log is not None:
            self.event_log.append(("cleared",))

    def _nodes(self) -> Iterator[Node]:
        stack = list(self.roots.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def stats(self) -> dict:
        return {**super().stats(), "cached_tokens_in_tree": self.total_size(),
                "num_nodes": sum(1 for n in self._nodes() if n.parent is not None)}
