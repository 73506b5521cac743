"""Orders the waiting queue before each prefill batch is formed.

`fcfs`: arrival order. `lpm`: longest cached prefix first (more reuse before the tree
churns), falling back to fcfs when the queue is too long to match every request.
`dfs-weight`: walk the radix tree depth-first, heavier subtrees first, so requests
sharing a prefix run back to back (SGLang paper, section 4).
"""

from __future__ import annotations

from collections import defaultdict

from runtime.cache.prefix_cache import PrefixCache
from runtime.core import Req

LPM_MAX_QUEUE = 128


def prefix_key(req: Req) -> list[int]:
    """Tokens a prefix match may cover: all but the last (its logits are needed), and
    nothing past the first prompt position whose logprob was asked for."""
    limit = req.seq_len - 1
    if req.options.wants_prompt_logprobs:
        limit = min(limit, max(req.options.logprob_start_len - 1, 0))
    return req.fill_ids[:limit]


def order_fcfs(waiting: list[Req], cache: PrefixCache) -> list[Req]:
    return waiting


def order_longest_prefix(waiting: list[Req], cache: PrefixCache) -> list[Req]:
    if len(waiting) <= 1 or len(waiting) > LPM_MAX_QUEUE:
        return waiting
    matches = {id(r): cache.match_prefix(prefix_key(r), r.extra_key).prefix_len for r in waiting}
    return sorted(waiting, key=lambda r: -matches[id(r)])  # stable: ties stay fcfs


def order_dfs_weight(waiting: list[Req], cache: PrefixCache) -> list[Req]:
    if len(waiting) <= 1:
        return waiting
    matches = {id(r): cache.match_prefix(prefix_key(r), r.extra_key) for r in waiting}
    by_node: dict[int, list[Req]] = defaultdict(list)
    nodes: dict[int, object] = {}
    for r in waiting:
        node = matches[id(r)].node
        by_node[id(node)].append(r)
        nodes[id(node)] = node
    # weight of a node = waiting requests in its subtree (computed by walking up parents)
    weight: dict[int, int] = defaultdict(int)
    children: dict[int, list] = defaultdict(list)
    roots = []
    seen: set[int] = set()
    for key, node in nodes.items():
        count = len(by_node[key])
        cur = node
        while cur is not None:
            weight[id(cur)] += count
            parent = getattr(cur, "parent", None)
            if id(cur) not in seen:
                seen.add(id(cur))
                if parent is None:
                    roots.append(cur)
                else:
                    children[id(parent)].append(cur)
            cur = parent
    ordered: list[Req] = []

    def visit(node) -> None:
        ordered.extend(by_node.get(id(node), []))
        for child in sorted(children[id(node)], key=lambda c: -weight[id(c)]):
            visit(child)

    for root in sorted(roots, key=lambda c: -weight[id(c)]):
        visit(root)
    return ordered
