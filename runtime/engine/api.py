"""`runtime.Engine`: the offline API. The scheduler and model run in a child process
(`runtime.engine.process`); this process tokenizes, validates, detokenizes and matches
stops. If the child dies, the reader thread sees EOF at once: every pending request ends
with an abort naming why, and new ones raise `EngineDeadError`."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import queue
import threading
import time
import weakref
from typing import Any, AsyncIterator, Iterator

from runtime.config import EngineConfig
from runtime.core import (
    AbortCause,
    AbortRequest,
    CheckLeaks,
    Control,
    ControlReply,
    EngineDeadError,
    EngineFailed,
    EngineReady,
    FinishReason,
    FlushCache,
    GenerateRequest,
    GetInfo,
    GetPrefixDigest,
    InjectFault,
    LookupPageHashes,
    RequestOptions,
    SamplingParams,
    TokenOut,
    new_rid,
)
from runtime.engine.detokenizer import IncrementalDetokenizer
from runtime.engine.output_processor import RequestState
from runtime.engine.process import EngineProcess
from runtime.models.resolve import resolve_model
from runtime.prompt_check import check_fits, check_prompt_text, max_prompt_bytes

logger = logging.getLogger("radixflow")

STARTUP_TIMEOUT_S = 600


class _Waiter:
    """Delivers one request's updates to a thread (queue.Queue) or an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.queue: Any = asyncio.Queue() if loop else queue.Queue()

    def put(self, item) -> None:
        if self.loop:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        else:
            self.queue.put(item)


class Engine:
    def __init__(self, model_path: str | None = None, **options: Any) -> None:
        from transformers import AutoTokenizer

        self.config = EngineConfig.from_options(model_path=model_path, **options)
        resolved = resolve_model(model_path)
        self.model_path = resolved.path  # the checkpoint directory loaded (a GGUF's converted copy)
        self.served_model_name = resolved.served_name
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._process = EngineProcess(self.config, self.model_path)
        self.info = self._wait_ready()
        self.max_prompt_bytes = max_prompt_bytes(self.tokenizer, self.info["context_length"])
        self._states: dict[str, tuple[RequestState, _Waiter]] = {}
        self._replies: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._gone: str | None = None  # why the engine process is gone
        self._reader = threading.Thread(target=self._read_outputs, daemon=True, name="radixflow-reader")
        self._reader.start()
        self._finalizer = weakref.finalize(self, self._process.stop)
        atexit.register(self.shutdown)

    def _wait_ready(self) -> dict:
        deadline = time.time() + STARTUP_TIMEOUT_S
        while time.time() < deadline:
            try:
                msg = self._process.recv(timeout=1.0)
            except (EOFError, OSError):
                self._process.stop()
                raise RuntimeError(f"engine process exited ({self._process.exit_reason()})") from None
            if isinstance(msg, EngineFailed):
                self._process.stop()
                raise RuntimeError(f"engine failed to start: {msg.error}")
            if isinstance(msg, EngineReady):
                return msg.info
        self._process.stop()
        raise RuntimeError("engine did not start in time")

    def _check_running(self) -> None:
        if self._closed or self._gone:
            raise EngineDeadError(self._gone or "the engine has been shut down")

    def is_alive(self) -> bool:
        """Whether requests can run: not shut down and the engine process is up."""
        return not self._closed and self._gone is None and self._process.is_alive()

    # ---- output routing (reader thread) -----------------------------------
    def _read_outputs(self) -> None:
        while True:
            try:
                msg = self._process.recv()
            except (EOFError, OSError):
                break
            for item in msg if isinstance(msg, list) else [msg]:
                if isinstance(item, ControlReply):
                    waiter = self._replies.pop(item.request_id, None)
                    if waiter:
                        waiter.put(item)
                elif isinstance(item, TokenOut):
                    self._route(item)
        self._engine_gone()

    def _engine_gone(self) -> None:
        """The connection closed: end everything pending with the reason."""
        if self._closed:
            reason = "the engine was shut down"
        else:
            reason = f"the engine process stopped ({self._process.exit_reason()})"
            logger.error("%s; pending requests fail, new ones are refused", reason)
        self._gone = reason
        self._fail_pending(reason)
        for waiter in list(self._replies.values()):
            waiter.put(EngineDeadError(reason))
        self._replies.clear()

    def _send(self, msg) -> None:
        """To the engine process; aborts for a gone engine are dropped (nothing to free)."""
        try:
            self._process.send(msg)
        except EngineDeadError:
            if not isinstance(msg, AbortRequest):
                raise

    def _route(self, out: TokenOut) -> None:
        with self._lock:
            entry = self._states.get(out.rid)
        if entry is None:
            return  # already ended here (stop string) or unknown
        state, waiter = entry
        with state.lock:
            stopped = state.apply(out, self.tokenizer)
        if stopped:
            self._send(AbortRequest(out.rid))  # a stop matched: free its KV in the engine
        if state.finished:
            with self._lock:
                self._states.pop(out.rid, None)
        waiter.put(state.finished)

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            entries, self._states = list(self._states.values()), {}
        for state, waiter in entries:
            with state.lock:
                state.finished, state.finish_reason = True, FinishReason.abort(AbortCause.ENGINE_GONE, reason)
            waiter.put(True)

    # ---- submission ---------------------------------------------------------
    def _prepare(self, prompt, input_ids, sampling_params, options: RequestOptions,
                 rid: str | None) -> list[GenerateRequest]:
        """Validate and tokenize one prompt; n > 1 becomes n requests (they share the
        prompt's KV through the prefix cache)."""
        self._check_running()
        params = sampling_params if isinstance(sampling_params, SamplingParams) else \
            SamplingParams.from_dict(sampling_params)
        vocab = self.info["vocab_size"]
        params.validate(vocab_size=vocab)
        if input_ids is None:
            if not isinstance(prompt, str):
                raise ValueError("prompt must be a string (or pass input_ids)")
            check_prompt_text(prompt, self.max_prompt_bytes)
            input_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        bad = [t for t in input_ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"input_ids contains token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        check_fits(len(input_ids), params.max_new_tokens, self.info["context_length"], self.info["max_total_tokens"])
        options.validate(len(input_ids))
        if not options.return_logprob:
            options = dataclasses.replace(options, logprob_start_len=-1)
        rid = rid or new_rid()
        n = params.n
        reqs = []
        for i in range(n):
            sp = dataclasses.replace(params, n=1)
            if n > 1 and sp.sampling_seed is not None:
                sp.sampling_seed += i
            reqs.append(GenerateRequest(rid=rid if n == 1 else f"{rid}-{i}", input_ids=list(input_ids),
                                        sampling_params=sp, options=options))
        return reqs

    def _submit(self, reqs: list[GenerateRequest], loop=None) -> list[tuple[RequestState, _Waiter]]:
        """Register and send requests; several go as one message, so the scheduler sees
        them together (one prefill batch, whatever the IPC timing)."""
        submitted = []
        with self._lock:
            rids = [r.rid for r in reqs]
            dup = next((r for i, r in enumerate(rids) if r in self._states or r in rids[:i]), None)
            if dup is not None:
                raise ValueError(f"duplicate request id {dup!r}")
            for req in reqs:
                sp = req.sampling_params
                detok = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=sp.skip_special_tokens,
                                               spaces_between_special_tokens=sp.spaces_between_special_tokens)
                state = RequestState(req.rid, sp, req.options, detok, prompt_tokens=len(req.input_ids))
                self._states[req.rid] = (state, _Waiter(loop))
                submitted.append(self._states[req.rid])
        try:
            self._send(reqs[0] if len(reqs) == 1 else list(reqs))
        except EngineDeadError:
            with self._lock:
                for rid in rids:
                    self._states.pop(rid, None)
            raise
        return submitted

    def _normalize_batch(self, prompt, input_ids, sampling_params) -> tuple[list, list, list, bool]:
        is_batch = isinstance(prompt, list) or (input_ids is not None and input_ids and isinstance(input_ids[0], list))
        if not is_batch:
            return [prompt], [input_ids], [sampling_params], False
        items = prompt if isinstance(prompt, list) else input_ids
        size = len(items)
        prompts = prompt if isinstance(prompt, list) else [None] * size
        ids = input_ids if input_ids is not None else [None] * size
        sps = sampling_params if isinstance(sampling_params, list) else [sampling_params] * size
        if len(sps) != size:
            raise ValueError(f"got {size} prompts but {len(sps)} sampling_params")
        return prompts, ids, sps, True

    def generate(self, prompt: str | list[str] | None = None, sampling_params: dict | list | None = None,
                 input_ids: list[int] | list[list[int]] | None = None, rid: str | None = None,
                 **options: Any) -> Any:
        """Blocking generation. One prompt -> a result dict (a list of n dicts when
        n > 1); a list of prompts -> a list. `options`: the RequestOptions fields
        (stream, return_logprob, logprob_start_len, top_logprobs_num, cache_salt,
        return_text_in_logprobs); stream=True -> an iterator of chunks."""
        opts = request_options(options)
        prompts, ids, sps, is_batch = self._normalize_batch(prompt, input_ids, sampling_params)
        groups = [self._prepare(p, i, s, opts, rid if not is_batch else None) for p, i, s in zip(prompts, ids, sps)]
        if opts.stream:
            if is_batch or len(groups[0]) > 1:
                raise ValueError("stream=True takes a single prompt with n=1")
            return self._stream(groups[0][0])
        submitted = iter(self._submit([r for group in groups for r in group]))
        results = [[self._wait(*next(submitted)) for _ in group] for group in groups]
        flat = [g[0] if len(g) == 1 else g for g in results]
        return flat if is_batch else flat[0]

    def _wait(self, state: RequestState, waiter: _Waiter) -> dict:
        while not waiter.queue.get():
            pass
        return state.result()

    def _stream(self, req: GenerateRequest) -> Iterator[dict]:
        [(state, waiter)] = self._submit([req])
        sent = 0
        try:
            while True:
                finished = waiter.queue.get()
                chunk, sent, finished = _next_chunk(state, sent, finished)
                if chunk is not None:
                    yield chunk
                if finished:
                    return
        finally:
            if not state.finished:
                self.abort(req.rid)

    async def async_generate(self, prompt: str | None = None, sampling_params: dict | None = None,
                             input_ids: list[int] | None = None, rid: str | None = None, **options: Any):
        """Async twin of `generate` for one prompt: returns the result dict (a list when
        n > 1), or with stream=True an async iterator of chunks."""
        opts = request_options(options)
        reqs = self._prepare(prompt, input_ids, sampling_params, opts, rid)
        loop = asyncio.get_running_loop()
        if opts.stream:
            if len(reqs) > 1:
                raise ValueError("stream=True takes n=1")
            return self._astream(reqs[0], loop)
        submitted = self._submit(reqs, loop)
        try:
            results = []
            for state, waiter in submitted:
                while not await waiter.queue.get():
                    pass
                results.append(state.result())
        except asyncio.CancelledError:
            for state, _ in submitted:
                if not state.finished:
                    self.abort(state.rid)
            raise
        return results[0] if len(results) == 1 else results

    async def _astream(self, req: GenerateRequest, loop) -> AsyncIterator[dict]:
        [(state, waiter)] = self._submit([req], loop)
        sent = 0
        try:
            while True:
                finished = await waiter.queue.get()
                chunk, sent, finished = _next_chunk(state, sent, finished)
                if chunk is not None:
                    yield chunk
                if finished:
                    return
        finally:
            if not state.finished:
                self.abort(req.rid)

    def abort(self, rid: str) -> None:
        """Abort a request (or all n of an n > 1 request) by id; a no-op once finished."""
        with self._lock:
            rids = [r for r in self._states if r == rid or r.startswith(f"{rid}-")]
        for r in rids:
            self._send(AbortRequest(r))

    # ---- control ------------------------------------------------------------
    def _control(self, msg: Control, timeout: float = 60.0) -> ControlReply:
        """Send one control message and wait for its reply."""
        self._check_running()
        waiter = _Waiter(None)
        self._replies[msg.request_id] = waiter
        try:
            self._send(msg)
            reply = waiter.queue.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"engine did not answer {type(msg).__name__} within {timeout}s") from None
        finally:
            self._replies.pop(msg.request_id, None)
        if isinstance(reply, EngineDeadError):
            raise reply
        return reply

    def get_server_info(self) -> dict:
        return self._control(GetInfo()).result

    def lookup_page_hashes(self, hashes: list[int]) -> dict:
        """How much of a prefix the cache holds, asked by its chained page hashes
        (`runtime.cache.page_hash.prefix_page_hashes`): {"pages", "tokens", "page_size"}."""
        return self._control(LookupPageHashes(hashes=list(hashes))).result

    def prefix_digest(self, block_pages: int = 1) -> dict:
        """The chained page hash of every cached prefix that is a whole number of blocks of
        `block_pages` pages: {"hashes", "page_size", "block_pages"} (for a cache-aware router)."""
        return self._control(GetPrefixDigest(block_pages=block_pages)).result

    def flush_cache(self) -> None:
        reply = self._control(FlushCache())
        if not reply.ok:
            raise RuntimeError(reply.error)

    def check_no_leaks(self) -> dict:
        """For tests: raises AssertionError unless every KV slot is free or cached."""
        reply = self._control(CheckLeaks())
        if not reply.ok:
            raise AssertionError(reply.error)
        return reply.result

    def inject_fault(self, fault: str) -> None:
        """Tests only (the engine process must run with RADIXFLOW_TEST_HOOKS=1):
        "crash_engine" (it exits at once) or "fail_next_step" (its next step raises)."""
        self._send(InjectFault(fault=fault))

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.shutdown)
        self._process.stop()
        self._fail_pending("the engine was shut down")

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def request_options(options: dict) -> RequestOptions:
    """`generate(**options)` as RequestOptions; an unknown name is a TypeError listing the known ones."""
    known = {f.name for f in dataclasses.fields(RequestOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown generate option(s) {unknown}; known: {sorted(known)}")
    return RequestOptions(**options)


def _next_chunk(state: RequestState, sent: int, finished: bool) -> tuple[dict | None, int, bool]:
    """A stream chunk (cumulative text plus the new `delta`) if there is news, the text sent
    so far, and whether the request is finished: as the update that woke the reader said, or
    already in the snapshot (the final output can land between that update and this read;
    the chunk is then the last one, and the final update still queued is not read)."""
    with state.lock:
        result, finished = state.result(), finished or state.finished
    if len(result["text"]) > sent or finished:
        result["delta"] = result["text"][sent:]
        return result, len(result["text"]), finished
    return None, sent, finished

