"""A decorated program: `run`, `run_batch`, their async twins, `bind`.

`run_batch` first traces the program on two items' arguments up to the first `gen` or
`select` (a tracing backend stops it there) and prefills the text they share once, so
every item reads that prefix from the radix cache instead of all of them prefilling it
at the same time (SGLang's frontend cache hint)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from runtime.lang.ir import DEFAULT_PARAMS, GenParams
from runtime.lang.state import ProgramState

logger = logging.getLogger("radixflow.lang")

MIN_HINT_CHARS = 32  # shorter shared prefixes are not worth a request


class Program:
    def __init__(self, func, bound: dict | None = None) -> None:
        self.func, self.bound = func, dict(bound or {})
        self.__name__ = getattr(func, "__name__", "program")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs) -> "Program":
        return Program(self.func, {**self.bound, **kwargs})

    def __call__(self, *args, **kwargs) -> ProgramState:
        return self.run(*args, **kwargs)

    def _split(self, kwargs: dict):
        """run(**kw) mixes program arguments, sampling defaults and run options."""
        from runtime.lang.api import get_default_backend

        backend = kwargs.pop("backend", None) or get_default_backend()
        if backend is None:
            raise ValueError("no backend: pass backend= or call set_default_backend(...) first")
        if "max_new_tokens" in kwargs:  # SGLang's run() spells it this way
            kwargs["max_tokens"] = kwargs.pop("max_new_tokens")
        names = set(GenParams.fields()) - set(inspect.signature(self.func).parameters)
        params = GenParams(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
        return backend, DEFAULT_PARAMS.merged(params), {**self.bound, **kwargs}

    def run(self, *args, stream: bool = False, **kwargs) -> ProgramState:
        """Run the program; with stream=True it runs in a thread and the state streams
        (`text_iter`). Exceptions raise here (run_batch keeps them in each state)."""
        backend, params, arguments = self._split(kwargs)
        state = ProgramState(backend, params, stream)
        if stream:
            threading.Thread(target=_execute, args=(self.func, state, args, arguments), daemon=True,
                             name=f"radixflow-program-{self.__name__}").start()
            return state
        _execute(self.func, state, args, arguments)
        if state.error() is not None:
            raise state.error()
        return state

    def run_batch(self, batch_kwargs: list[dict], num_threads="auto", progress_bar: bool = False,
                  **kwargs) -> list[ProgramState]:
        """Run one program per dict of arguments, concurrently; an item that raises keeps
        its exception in its state (`state.error()`) and the others go on."""
        if not batch_kwargs:
            return []
        backend, params, common = self._split(dict(kwargs))
        items = [{**common, **item} for item in batch_kwargs]
        self._prefill_shared_prefix(backend, params, items)
        workers = min(len(items), (os.cpu_count() or 2) * 16 if num_threads == "auto" else int(num_threads))
        states = [ProgramState(backend, params) for _ in items]
        bar = _progress(len(items)) if progress_bar else None
        with ThreadPoolExecutor(max(workers, 1)) as pool:
            futures = [pool.submit(_execute, self.func, s, (), item) for s, item in zip(states, items)]
            for future in futures:
                future.result()
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return states

    async def run_async(self, *args, **kwargs) -> ProgramState:
        return await asyncio.to_thread(lambda: self.run(*args, **kwargs))

    async def run_batch_async(self, batch_kwargs: list[dict], **kwargs) -> list[ProgramState]:
        return await asyncio.to_thread(lambda: self.run_batch(batch_kwargs, **kwargs))

    def _prefill_shared_prefix(self, backend, params: GenParams, items: list[dict]) -> None:
        if len(items) < 2:
            return
        traced = [self._trace(backend, params, item) for item in items[:2]]
        if backend.chat_api:  # the messages both items begin with
            shared_messages = []
            for x, y in zip(*(state.messages() for state in traced)):
                if x != y:
                    break
                shared_messages.append(x)
            if shared_messages:
                backend.cache_prefix(shared_messages)
            return
        shared = os.path.commonprefix([state.text() for state in traced])
        if len(shared) >= MIN_HINT_CHARS:
            backend.cache_prefix(shared)

    def _trace(self, backend, params: GenParams, arguments: dict) -> ProgramState:
        """The program's state at its first gen/select."""
        state = ProgramState(_TracingBackend(backend), params)
        _execute(self.func, state, (), arguments)
        return state


def _execute(func, state: ProgramState, args: tuple, kwargs: dict) -> None:
    try:
        func(state, *args, **kwargs)
    except _StopTrace:
        state._finish()
    except Exception as e:  # noqa: BLE001 - kept in the state (run raises it again)
        logger.debug("program %s failed: %r", getattr(func, "__name__", func), e)
        state._finish(e)
    else:
        state._finish()


class _StopTrace(Exception):
    pass


class _TracingBackend:
    """Knows the chat roles; stops the program at its first model call."""

    def __init__(self, backend) -> None:
        self.chat_roles, self.chat_api = backend.chat_roles, backend.chat_api

    def __getattr__(self, name: str):
        raise _StopTrace()


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="programs")
