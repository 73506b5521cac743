"""Grammar compilation off the hot path: requests with a grammar wait here (not in
the scheduler's waiting queue) until their grammar is compiled in a thread pool;
a bad spec or a compile past the timeout ends only that request.

The timeout counts from the start of the request's compile, not from its arrival:
time spent queued behind other compiles does not count."""

from __future__ import annotations

import time

from runtime.config import EngineConfig
from runtime.constrained.base import CompileTimeoutError
from runtime.core import Req


class GrammarManager:
    def __init__(self, cfg: EngineConfig, model_path: str, vocab_size: int, eos_token_ids) -> None:
        self.cfg, self.model_path = cfg, model_path
        self.vocab_size, self.eos_token_ids = vocab_size, list(eos_token_ids)
        self._compiler = None
        self.tokenizer = None  # loaded with the compiler
        # (request, Future, deadline: None while the compile is queued)
        self.pending: list[tuple[Req, object, float | None]] = []
        self.compile_times: list[float] = []  # seconds, for metrics
        self._timed_out = f"grammar compilation timed out after {cfg.grammar_compile_timeout_s}s"

    @property
    def compiler(self):
        """Built on first use: the backend scans the whole vocabulary (seconds)."""
        if self._compiler is None:
            from transformers import AutoTokenizer

            from runtime.constrained.compiler import GrammarCompiler
            from runtime.constrained.registry import DEFAULT_BACKEND, get_backend

            name = DEFAULT_BACKEND if self.cfg.grammar_backend == "auto" else self.cfg.grammar_backend
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            backend = get_backend(name, self.tokenizer, self.vocab_size, self.eos_token_ids)
            backend.compile_timeout_s = self.cfg.grammar_compile_timeout_s  # outlines stops its compile
            self._compiler = GrammarCompiler(backend)
        return self._compiler

    @staticmethod
    def spec_for(req: Req):
        """The request's GrammarSpec, or None; raises GrammarError (a ValueError) if invalid."""
        sp = req.sampling_params
        if sp.json_schema is None and sp.regex is None and sp.ebnf is None and sp.structural_tag is None:
            return None
        from runtime.constrained.base import GrammarSpec

        return GrammarSpec.from_sampling_params(sp)

    def submit(self, req: Req, spec) -> None:
        self.pending.append((req, self.compiler.submit(spec), None))
        req.grammar_submitted_at = time.monotonic()

    def poll(self) -> tuple[list[Req], list[tuple[Req, str]]]:
        """Requests whose grammar is ready (matcher attached) and those that failed."""
        ready, failed, still = [], [], []
        now = time.monotonic()
        for req, fut, deadline in self.pending:
            if fut.done():
                try:
                    req.grammar = self.compiler.new_matcher(fut.result())
                    self.compile_times.append(now - req.grammar_submitted_at)
                    ready.append(req)
                except CompileTimeoutError as e:  # the backend stopped its own compile
                    failed.append((req, f"{self._timed_out}: {e}"))
                except Exception as e:  # GrammarError and anything the backend raised
                    failed.append((req, f"invalid grammar: {e}"))
            elif deadline is None:  # queued until now: its time starts when its compile does
                still.append((req, fut, now + self.cfg.grammar_compile_timeout_s if fut.running() else None))
            elif now > deadline:
                self.compiler.abandon(fut)  # grammars queued behind it start now
                failed.append((req, self._timed_out))
            else:
                still.append((req, fut, deadline))
        self.pending = still
        return ready, failed

    def remove(self, rid: str) -> Req | None:
        for i, (req, _, _) in enumerate(self.pending):
            if req.rid == rid:
                del self.pending[i]
                return req
        return None
