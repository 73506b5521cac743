"""Chained xxh3 page hashes: a stable identity for every cached page of a prefix.

hash(page i) = xxh3_64(hash(page i-1) || token ids of page i), seeded for page 0 by the
namespace (extra_key / cache_salt). So a hash names a whole prefix, not just one
page, and a router or an external KV tier can ask "do you hold this prefix?" with
a list of hashes instead of the tokens themselves.
"""

from __future__ import annotations

import array

import xxhash


def namespace_seed(extra_key: str | None) -> int:
    return 0 if extra_key is None else xxhash.xxh3_64_intdigest(extra_key.encode())


def chain_page_hashes(token_ids: list[int], page_size: int, parent_hash: int) -> list[int]:
    """Hashes of each full page of token_ids, continuing the chain from parent_hash."""
    out = []
    h = parent_hash
    for start in range(0, len(token_ids) - page_size + 1, page_size):
        page = array.array("q", token_ids[start:start + page_size]).tobytes()
        h = xxhash.xxh3_64_intdigest(page, seed=h)
        out.append(h)
    return out


def prefix_page_hashes(token_ids: list[int], page_size: int = 1, extra_key: str | None = None) -> list[int]:
    """What a client computes to query `lookup_page_hashes` (same function the cache uses)."""
    return chain_page_hashes(token_ids, page_size, namespace_seed(extra_key))
