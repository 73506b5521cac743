"""The engine process: scheduler + model runner in a loop, fed by typed messages over
its connection to the parent (`runtime.engine.process`).

In: GenerateRequest | AbortRequest | a Control message (runtime.core). Out: EngineReady | EngineFailed
first, then lists of TokenOut (one list per step) and ControlReply. The loop waits on
nothing but the connection, and only when it has no work. The parent going away (EOF)
ends it.
"""

from __future__ import annotations

import logging
import os
import time
import traceback

from runtime.components import PREFIX_CACHES, load
from runtime.config import EngineConfig
from runtime.core import (
    AbortCause,
    AbortRequest,
    CheckLeaks,
    Control,
    ControlReply,
    EngineFailed,
    EngineReady,
    FinishReason,
    FlushCache,
    GenerateRequest,
    GetInfo,
    GetPrefixDigest,
    GetStepTimes,
    InjectFault,
    LookupPageHashes,
    ResetStepTimes,
    Shutdown,
    TokenOut,
)

logger = logging.getLogger("radixflow.engine")


def make_prefix_cache(cfg: EngineConfig, pool):
    name = "none" if cfg.disable_radix_cache else "radix"
    return load(PREFIX_CACHES, name, "prefix cache")(pool, page_size=cfg.page_size)


class ControlRefused(Exception):
    """A control message that cannot be carried out now; the reply says why."""


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
        self.kv_events = None  # KVEventPublisher with --kv-events-endpoint
        if cfg.kv_events_endpoint is not None and hasattr(self.cache, "event_log"):
            from runtime.cache.kv_events import KVEventPublisher

            self.kv_events = KVEventPublisher(cfg.kv_events_endpoint, cfg.kv_events_topic, cfg.page_size)
            self.cache.event_log = []
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
            "radix_cache": self.cache.shares,
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
        if isinstance(msg, Control):
            return [self._control(msg)]
        raise TypeError(f"unexpected message {type(msg).__name__}")

    def _control(self, msg: Control) -> ControlReply:
        handler = self.CONTROL_HANDLERS.get(type(msg))
        if handler is None:
            return ControlReply(msg.request_id, False, error=f"unknown control message {type(msg).__name__}")
        try:
            return ControlReply(msg.request_id, True, handler(self, msg))
        except ControlRefused as e:
            return ControlReply(msg.request_id, False, error=str(e))

    def _flush_cache(self, msg: FlushCache) -> dict:
        if self.scheduler.has_work:
            n = self.scheduler.num_requests()
            raise ControlRefused(f"cannot flush the cache while requests run ({n['running']} running, "
                                 f"{n['waiting']} waiting)")
        self.cache.reset()
        self.scheduler.drafter.forget()  # what the suffix source learnt goes with the cache
        self.publish_kv_events()
        return {"flushed": True}

    def _lookup_page_hashes(self, msg: LookupPageHashes) -> dict:
        pages = self.cache.lookup_page_hashes(msg.hashes)
        return {"pages": pages, "tokens": pages * self.cfg.page_size, "page_size": self.cfg.page_size}

    def _prefix_digest(self, msg: GetPrefixDigest) -> dict:
        block_pages = max(1, msg.block_pages)
        return {"hashes": self.cache.prefix_digest(block_pages), "page_size": self.cfg.page_size,
                "block_pages": block_pages}

    def _reset_step_times(self, msg: ResetStepTimes) -> None:
        self.step_times = []

    def _check_leaks(self, msg: CheckLeaks) -> dict:
        try:
            self.scheduler.check_no_leaks()
        except AssertionError as e:
            raise ControlRefused(str(e)) from None
        return self.info()

    CONTROL_HANDLERS = {
        GetInfo: lambda self, msg: self.info(),
        FlushCache: _flush_cache,
        LookupPageHashes: _lookup_page_hashes,
        GetPrefixDigest: _prefix_digest,
        GetStepTimes: lambda self, msg: self.step_times,
        ResetStepTimes: _reset_step_times,
        CheckLeaks: _check_leaks,
    }

    def publish_kv_events(self) -> None:
        if self.kv_events is not None and self.cache.event_log:
            self.kv_events.publish(self.cache.event_log)
            self.cache.event_log.clear()

    def step(self) -> list:
        start, fwd0 = time.perf_counter(), self.runner.forward_time
        outs = self.scheduler.step()
        self.publish_kv_events()
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
            out.finish_reason = FinishReason.abort(AbortCause.INTERNAL, f"internal error: {error}")
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
        return  # the parent is gone (tensor-parallel workers see our end of their connection close)
    finally:
        core.runner.close()


def _loop(core: EngineCore, conn) -> None:
    while True:
        msgs = _drain(conn, block=not core.scheduler.has_work)
        outs: list = []
        for msg in msgs:
            if isinstance(msg, Shutdown):
                conn.send([ControlReply(msg.request_id, True)])
                return
            if isinstance(msg, InjectFault):
                if msg.fault in FAULTS:
                    FAULTS[msg.fault](core)
                continue
            try:
                outs += core.handle(msg)
            except Exception as e:
                logger.exception("bad message")
                if isinstance(msg, GenerateRequest):
                    outs.append(TokenOut(msg.rid, [], True, FinishReason.abort(AbortCause.INVALID_REQUEST, str(e))))
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
    """Every message waiting; when idle, wait for one (EOFError: the parent is gone).
    A list is a batch of requests sent together."""
    msgs = []
    if block and not conn.poll(1.0):
        return msgs
    while conn.poll(0):
        msg = conn.recv()
        msgs += msg if isinstance(msg, list) else [msg]
    return msgs


def _exit_now(core: EngineCore) -> None:
    os._exit(70)  # like a crash: no goodbye, no cleanup


def _fail_next_step(core: EngineCore) -> None:
    core.fail_next_step = True


# test-only fault hooks (InjectFault.fault), honoured when RADIXFLOW_TEST_HOOKS=1
FAULTS = {"crash_engine": _exit_now, "fail_next_step": _fail_next_step} \
    if os.environ.get("RADIXFLOW_TEST_HOOKS") == "1" else {}
