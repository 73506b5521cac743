"""The engine process: scheduler + model runner in a loop, fed by typed messages over
its connection to the parent (`runtime.engine.process`).

In: GenerateRequest | AbortRequest | ControlRequest. Out: EngineReady | EngineFailed
first, then lists of TokenOut (one list per step) and ControlReply. The loop waits on
nothing but the connection, and only when it has no work. The parent going away (EOF)
ends it.
"""

from __future__ import annotations

import logging
import os
import time
import traceback

from runtime.cache.prefix_cache import NoPrefixCache
from runtime.config import EngineConfig
from runtime.core import (
    AbortRequest,
    ControlReply,
    ControlRequest,
    EngineFailed,
    EngineReady,
    FinishKind,
    FinishReason,
    GenerateRequest,
)

logger = logging.getLogger("radixflow.engine")


def make_prefix_cache(cfg: EngineConfig, pool):
    if cfg.disable_radix_cache:
        return NoPrefixCache(pool)
    try:
        from runtime.cache.radix_cache import RadixCache
    except ImportError:  # the radix cache is optional until it lands
        return NoPrefixCache(pool)
    return RadixCache(pool, page_size=cfg.page_size)


class EngineCore:
    """Everything the engine process owns; also usable in-process by tests."""

    def __init__(self, cfg: EngineConfig, model_path: str) -> None:
        from runtime.engine.grammar_manager import GrammarManager
        from runtime.engine.model_runner import ModelRunner
        from runtime.engine.scheduler import Scheduler

        self.cfg = cfg
        self.runner = ModelRunner(cfg, model_path)
        self.cache = make_prefix_cache(cfg, self.runner.pool)
        mc = self.runner.model_config
        self.grammars = GrammarManager(cfg, model_path, mc.vocab_size, mc.eos_token_ids)
        self.scheduler = Scheduler(cfg, self.runner, self.runner.pool, self.runner.table, self.cache,
                                   self.runner.context_len, mc.eos_token_ids, self.grammars)
        self.step_times: list[dict] = []  # per step: mode, batch_size, start, wall s, forward s (bench only)
        self.fail_next_step = False  # the "fail_next_step" test hook

    def info(self) -> dict:
        mc, pool = self.runner.model_config, self.runner.pool
        return {
            "architecture": mc.architecture, "vocab_size": mc.vocab_size, "dtype": str(self.runner.dtype),
            "device": self.runner.device, "context_length": self.runner.context_len,
            "max_total_tokens": pool.capacity, "available_tokens": pool.available_size(),
            "page_size": pool.page_size, "eos_token_ids": list(mc.eos_token_ids),
            "max_running_requests": self.cfg.max_running_requests,
            "radix_cache": type(self.cache).__name__ != "NoPrefixCache",
            **self.scheduler.num_requests(), **self.scheduler.stats, **self.cache.stats(),
            "grammar_compile_count": len(self.grammars.compile_times),
            "grammar_compile_s_total": round(sum(self.grammars.compile_times), 4),
        }

    def handle(self, msg) -> list:
        """Apply one inbox message; returns messages for the outbox."""
        if isinstance(msg, GenerateRequest):
            return self.scheduler.add_request(msg)
        if isinstance(msg, AbortRequest):
            return self.scheduler.abort(msg.rid)
        if isinstance(msg, ControlRequest):
            return [self._control(msg)]
        raise TypeError(f"unexpected message {type(msg).__name__}")

    def _control(self, msg: ControlRequest) -> ControlReply:
        if msg.kind == "get_info":
            return ControlReply(msg.request_id, True, self.info())
        if msg.kind == "flush_cache":
            if self.scheduler.has_work:
                n = self.scheduler.num_requests()
                return ControlReply(msg.request_id, False, error=(
                    f"cannot flush the cache while requests run ({n['running']} running, "
                    f"{n['waiting']} waiting)"))
            self.cache.reset()
            return ControlReply(msg.request_id, True, {"flushed": True})
        if msg.kind == "lookup_page_hashes":
            lookup = getattr(self.cache, "lookup_page_hashes", None)
            pages = lookup(msg.args["hashes"]) if lookup else 0
            return ControlReply(msg.request_id, True, {"pages": pages, "tokens": pages * self.cfg.page_size,
                                                       "page_size": self.cfg.page_size})
        if msg.kind == "get_step_times":
            return ControlReply(msg.request_id, True, self.step_times)
        if msg.kind == "reset_step_times":
            self.step_times = []
            return ControlReply(msg.request_id, True)
        if msg.kind == "check_leaks":
            try:
                self.scheduler.check_no_leaks()
                return ControlReply(msg.request_id, True, self.info())
            except AssertionError as e:
                return ControlReply(msg.request_id, False, error=str(e))
        return ControlReply(msg.request_id, False, error=f"unknown control request {msg.kind!r}")

    def step(self) -> list:
        start, fwd0 = time.perf_counter(), self.runner.forward_time
        outs = self.scheduler.step()
        batch = self.scheduler.last_batch
        if self.cfg.extra.get("record_step_times") and batch is not None:
            self.step_times.append({"mode": batch.mode.value, "batch_size": len(batch.reqs), "start": start,
                                    "wall": time.perf_counter() - start,
                                    "forward": self.runner.forward_time - fwd0,
                                    "finished": sum(out.finished for out in outs)})
        return outs

    def fail_all(self, error: str) -> list:
        """After an internal error: end every request with an abort naming the error."""
        outs = []
        s = self.scheduler
        for req in list(s.waiting) + list(s.running) + list(s.partial) + [r for r, _, _ in s.grammars.pending]:
            outs += s.abort(req.rid)
        for out in outs:
            out.finish_reason = FinishReason(FinishKind.ABORT, message=f"internal error: {error}")
        return outs


def run_engine_process(cfg: EngineConfig, model_path: str, conn) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine %(levelname)s %(message)s")
    try:
        core = EngineCore(cfg, model_path)
    except Exception as e:  # report, don't hang the parent
        conn.send(EngineFailed(f"{type(e).__name__}: {e}"))
        return
    conn.send(EngineReady(core.info()))
    try:
        _loop(core, conn)
    except (EOFError, OSError):
        return  # the parent is gone


def _loop(core: EngineCore, conn) -> None:
    while True:
        msgs = _drain(conn, block=not core.scheduler.has_work)
        outs: list = []
        for msg in msgs:
            if isinstance(msg, ControlRequest) and msg.kind == "shutdown":
                conn.send([ControlReply(msg.request_id, True)])
                return
            if isinstance(msg, ControlRequest) and msg.kind in FAULTS:
                FAULTS[msg.kind](core)
                continue
            try:
                outs += core.handle(msg)
            except Exception as e:
                logger.exception("bad message")
                if isinstance(msg, GenerateRequest):
                    from runtime.core import TokenOut
                    outs.append(TokenOut(msg.rid, [], "", True, FinishReason(FinishKind.ABORT, message=str(e))))
        try:
            if core.fail_next_step:
                core.fail_next_step = False
                raise RuntimeError("injected fault (a test hook)")
            outs += core.step()
        except Exception as e:
            logger.error("engine step failed:\n%s", traceback.format_exc())
            outs += core.fail_all(f"{type(e).__name__}: {e}")
        if outs:
            conn.send(outs)
        if core.scheduler.last_batch is None and core.scheduler.has_work:
            time.sleep(0.002)  # only grammars compiling: don't spin against the compile thread


def _drain(conn, block: bool) -> list:
    """Every message waiting; when idle, wait for one (EOFError: the parent is gone)."""
    msgs = []
    if block and not conn.poll(1.0):
        return msgs
    while conn.poll(0):
        msgs.append(conn.recv())
    return msgs


def _exit_now(core: EngineCore) -> None:
    os._exit(70)  # like a crash: no goodbye, no cleanup


def _fail_next_step(core: EngineCore) -> None:
    core.fail_next_step = True


# test-only fault hooks (ControlRequest kinds), honoured when RADIXFLOW_TEST_HOOKS=1
FAULTS = {"crash_engine": _exit_now, "fail_next_step": _fail_next_step} \
    if os.environ.get("RADIXFLOW_TEST_HOOKS") == "1" else {}
