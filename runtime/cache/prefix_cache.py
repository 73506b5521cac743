"""The prefix-cache interface the scheduler allocates through, and the no-sharing cache.

Ownership of KV slots: a slot is exactly one of (a) free in the KVPool, (b) held by
the cache (shared, reusable by later requests), or (c) owned by one live request.
`match_prefix` returns slots of kind (b); the request `lock`s the matched node so
they cannot be evicted while it reads them. When a request ends, `cache_finished`
takes its slots of kind (c) and either keeps them (b) or frees them (a).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch

from runtime.cache.kv_pool import KVPool


@dataclass
class PrefixMatch:
    slots: torch.Tensor  # int64 [prefix_len]: KV slots of the matched prefix
    node: Any  # handle passed back to lock/unlock (None: nothing matched)

    @property
    def prefix_len(self) -> int:
        return int(self.slots.numel())


class PrefixCache(abc.ABC):
    """Contract: every slot handed to `cache_finished`/`cache_unfinished` is owned by
    the caller and becomes the cache's responsibility; counts stay exact."""

    shares = True  # False for caches that never return a prefix (scheduling shortcuts)

    def __init__(self, pool: KVPool, page_size: int = 1) -> None:
        self.pool = pool
        self.page_size = page_size

    @abc.abstractmethod
    def match_prefix(self, token_ids: list[int], extra_key: str | None = None) -> PrefixMatch:
        """Longest cached prefix of token_ids (namespaced by extra_key)."""

    @abc.abstractmethod
    def lock(self, node: Any) -> None:
        """Protect node and its ancestors from eviction."""

    @abc.abstractmethod
    def unlock(self, node: Any) -> None:
        """Undo one `lock(node)`."""

    @abc.abstractmethod
    def cache_finished(self, token_ids: list[int], slots: torch.Tensor, locked_node: Any,
                       extra_key: str | None = None) -> None:
        """A request ended: slots[i] holds the KV of token_ids[i]. Unlocks locked_node."""

    @abc.abstractmethod
    def cache_unfinished(self, token_ids: list[int], slots: torch.Tensor, locked_node: Any,
                         extra_key: str | None = None) -> PrefixMatch:
        """A request is still running (e.g. between prefill chunks): share what it computed.

        Returns the new match covering token_ids, already locked (locked_node unlocked);
        its slots replace the request's (duplicates were freed)."""

    @abc.abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens unlocked cached slots if possible; returns the number freed."""

    @abc.abstractmethod
    def evictable_size(self) -> int: ...

    @abc.abstractmethod
    def protected_size(self) -> int: ...

    def total_size(self) -> int:
        return self.evictable_size() + self.protected_size()

    @abc.abstractmethod
    def reset(self) -> None:
        """Drop every cached entry (caller guarantees no request holds a lock)."""

    def lookup_page_hashes(self, hashes: list[int]) -> int:
        """How many leading pages of a prefix (chained `prefix_page_hashes`) are cached."""
        return 0

    def prefix_digest(self, block_pages: int) -> list[int]:
        """The hash of each cached page that ends a prefix of a multiple of `block_pages` pages."""
        return []

    def stats(self) -> dict[str, Any]:
        return {"evictable_tokens": self.evictable_size(), "protected_tokens": self.protected_size()}


class NoPrefixCache(PrefixCache):
    """Shares nothing: a finished request's slots go straight back to the pool."""

    shares = False

    _EMPTY = torch.empty(0, dtype=torch.int64)

    def match_prefix(self, token_ids, extra_key=None) -> PrefixMatch:
        return PrefixMatch(self._EMPTY, None)

    def lock(self, node) -> None:
        pass

    def unlock(self, node) -> None:
        pass

    def cache_finished(self, token_ids, slots, locked_node, extra_key=None) -> None:
        self.pool.free(slots)

    def cache_unfinished(self, token_ids, slots, locked_node, extra_key=None) -> PrefixMatch:
        return PrefixMatch(self._EMPTY, None)  # nothing shared: the request keeps its slots

    def evict(self, num_tokens: int) -> int:
        return 0

    def evictable_size(self) -> int:
        return 0

    def protected_size(self) -> int:
        return 0

    def reset(self) -> None:
        pass
