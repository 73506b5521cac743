"""Asynchronous, cached grammar compilation shared by the engine.

    compiler = GrammarCompiler(backend, max_workers=2)
    fut = compiler.submit(spec)          # never blocks; same spec -> same Future
    ...                                  # each scheduler step:
    if fut.done():
        compiled = fut.result()          # raises GrammarError for a bad spec (-> HTTP 400 / abort)
        matcher = compiler.backend.new_matcher(compiled)
    elif time.monotonic() - req_wait_start > timeout_s:
        abort the request               # the compile keeps running (threads cannot be killed)

Cache: an LRU of Futures keyed by `spec.cache_key(backend.name)`; a hit returns the
very same Future (and so the same CompiledGrammar object), pending or done. Failed
compiles are cached only for `error_ttl_s` (so a burst of identical bad requests
compiles once, but a later retry compiles again); cancelled futures are dropped.
Callers must not `cancel()` a shared Future; they just stop waiting on it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from runtime.constrained.base import CompiledGrammar, GrammarBackend, GrammarSpec


@dataclass
class CompilerStats:
    hits: int = 0
    misses: int = 0
    failures: int = 0


class GrammarCompiler:
    def __init__(self, backend: GrammarBackend, max_workers: int = 1, cache_size: int = 1024,
                 error_ttl_s: float = 10.0) -> None:
        assert max_workers >= 1 and cache_size >= 1
        self.backend = backend
        self.cache_size = cache_size
        self.error_ttl_s = error_ttl_s
        self.stats = CompilerStats()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grammar-compile")
        # reentrant: a Future that is already done runs its done-callback inside submit()
        self._lock = threading.RLock()
        self._cache: OrderedDict[int, Future] = OrderedDict()  # LRU, most recent last
        self._failed_at: dict[int, float] = {}  # key -> monotonic time its compile failed

    def submit(self, spec: GrammarSpec) -> Future:
        """A Future of the CompiledGrammar (its exception: GrammarError for a bad spec)."""
        key = spec.cache_key(self.backend.name)
        with self._lock:
            fut = self._cache.get(key)
            if fut is not None and self._usable(key, fut):
                self._cache.move_to_end(key)
                self.stats.hits += 1
                return fut
            self.stats.misses += 1
            fut = self._pool.submit(self.backend.compile, spec)
            self._cache[key] = fut
            self._failed_at.pop(key, None)
            fut.add_done_callback(lambda f, key=key: self._on_done(key, f))
            while len(self._cache) > self.cache_size:
                old_key, _ = self._cache.popitem(last=False)  # waiters keep their own reference
                self._failed_at.pop(old_key, None)
            return fut

    def compile(self, spec: GrammarSpec, timeout: float | None = None) -> CompiledGrammar:
        """Blocking convenience: submit and wait (TimeoutError after `timeout` seconds)."""
        return self.submit(spec).result(timeout=timeout)

    def new_matcher(self, compiled: CompiledGrammar):
        return self.backend.new_matcher(compiled)

    def cached(self, spec: GrammarSpec) -> bool:
        with self._lock:
            return spec.cache_key(self.backend.name) in self._cache

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._failed_at.clear()

    def shutdown(self, wait: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _on_done(self, key: int, fut: Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            with self._lock:
                self.stats.failures += 1
                if self._cache.get(key) is fut:
                    self._failed_at[key] = time.monotonic()

    def _usable(self, key: int, fut: Future) -> bool:
        """Pending or successful futures are reused; failures only within error_ttl_s."""
        if fut.cancelled():
            return False
        failed_at = self._failed_at.get(key)
        return failed_at is None or time.monotonic() - failed_at < self.error_ttl_s
