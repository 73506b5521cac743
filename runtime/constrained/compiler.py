"""Asynchronous, cached grammar compilation shared by the engine.

    compiler = GrammarCompiler(backend, max_workers=2)
    fut = compiler.submit(spec)          # never blocks; same spec -> same Future
    ...                                  # each scheduler step:
    if fut.done():
        compiled = fut.result()          # raises GrammarError for a bad spec (-> HTTP 400 / abort)
        matcher = compiler.backend.new_matcher(compiled)
    elif time.monotonic() - req_wait_start > timeout_s:
        compiler.abandon(fut)            # queued compiles need not wait behind it
        abort the request               # the compile keeps running (threads cannot be killed)

Cache: an LRU of Futures keyed by `spec.cache_key(backend.name)`; a hit returns the
very same Future (and so the same CompiledGrammar object), pending or done. Failed
compiles are cached only for `error_ttl_s` (so a burst of identical bad requests
compiles once, but a later retry compiles again); cancelled futures are dropped.
Callers must not `cancel()` a shared Future; they just stop waiting on it.

Workers: at most `max_workers` compiles count as running; the rest queue. A compile
whose waiters gave up (`abandon`) stops counting, so one pathological schema (outlines
can index one for minutes) does not hold up every grammar behind it. Its thread runs
on to the end; at most `max_abandoned` such threads exist at a time (beyond that an
abandoned compile keeps its slot), which bounds the CPU they can take.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass

from runtime.constrained.base import CompiledGrammar, GrammarBackend, GrammarSpec


@dataclass
class CompilerStats:
    hits: int = 0
    misses: int = 0
    failures: int = 0


class GrammarCompiler:
    def __init__(self, backend: GrammarBackend, max_workers: int = 1, cache_size: int = 1024,
                 error_ttl_s: float = 10.0, max_abandoned: int = 2) -> None:
        assert max_workers >= 1 and cache_size >= 1 and max_abandoned >= 0
        self.backend = backend
        self.cache_size = cache_size
        self.error_ttl_s = error_ttl_s
        self.max_workers, self.max_abandoned = max_workers, max_abandoned
        self.stats = CompilerStats()
        self._queue: deque[tuple[GrammarSpec, Future]] = deque()  # submitted, not started
        self._running: set[Future] = set()  # started and counting against max_workers
        self._abandoned: set[Future] = set()  # started, given up on, still running
        self._closed = False
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
            fut = Future()
            self._queue.append((spec, fut))
            self._start_queued()
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

    def abandon(self, fut: Future) -> None:
        """A request waiting on `fut` timed out: let queued compiles start now instead of
        behind it, unless max_abandoned threads already run on. Other waiters on `fut`
        still get its result when it ends."""
        with self._lock:
            if fut in self._running and len(self._abandoned) < self.max_abandoned:
                self._running.discard(fut)
                self._abandoned.add(fut)
                self._start_queued()

    def shutdown(self, wait: bool = False) -> None:
        """Cancel queued compiles; with wait=True, also wait for running ones."""
        with self._lock:
            self._closed = True
            while self._queue:
                self._queue.popleft()[1].cancel()
            started = list(self._running | self._abandoned)
        for fut in started if wait else []:
            try:
                fut.result()
            except Exception:
                pass

    # ------------------------------------------------------------------ internals
    def _start_queued(self) -> None:
        """Start queued compiles while fewer than max_workers count as running (lock held)."""
        while self._queue and len(self._running) < self.max_workers and not self._closed:
            spec, fut = self._queue.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            self._running.add(fut)
            threading.Thread(target=self._run, args=(spec, fut), name="grammar-compile", daemon=True).start()

    def _run(self, spec: GrammarSpec, fut: Future) -> None:
        try:
            compiled = self.backend.compile(spec)
        except BaseException as e:  # delivered to the waiters (GrammarError for a bad spec)
            fut.set_exception(e)
        else:
            fut.set_result(compiled)
        with self._lock:
            self._running.discard(fut)
            self._abandoned.discard(fut)
            self._start_queued()

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
