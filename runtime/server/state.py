"""What every route handler shares: the engine, tokenizer, chat template, tool-call
parser choice, metrics, settings, and admission control (in-flight request limit)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.chat_roles import ChatRoles, read_chat_roles
from runtime.prompt_check import check_prompt_text
from runtime.server.chat_template import ChatTemplate
from runtime.server.errors import APIError
from runtime.server.metrics import ServerMetrics
from runtime.tool_calls.prompt_format import template_input

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
ROUTING_POLICIES = ("prefix", "round_robin")  # --replicas: how requests pick a replica (runtime/server/ray_serve.py)
RETRY_AFTER_S = 1
WATCH_INTERVAL_S = 0.5  # how often --restart-engine-on-failure checks the engine

logger = logging.getLogger("radixflow.server")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    served_model_name: str | None = None
    chat_template: str | None = None  # a file that overrides the checkpoint's template
    tool_call_parser: str = "auto"
    reasoning_parser: str = "none"  # "think": outputs are [<think>] reasoning </think> answer
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    restart_engine_on_failure: bool = False


def session_id(request, named: str | None) -> str | None:
    """The session a request belongs to, for replicas behind a router: the body's own field
    (OpenAI `user`, native `session_id`), else the X-Session-ID header."""
    return named or request.headers.get("x-session-id")


class EngineClient(Protocol):
    """All the server uses of an engine: `runtime.Engine` (the engine process behind it)
    or a test double. Nothing else of the engine is reached into."""

    tokenizer: Any
    info: dict  # context_length, vocab_size, max_total_tokens, architecture, ...
    config: Any  # EngineConfig: max_running_requests, max_queued_requests
    model_path: str
    served_model_name: str
    max_prompt_bytes: int

    async def async_generate(self, prompt=None, sampling_params=None, input_ids=None, rid=None,
                             **options) -> Any: ...

    def get_server_info(self) -> dict: ...

    def flush_cache(self) -> None: ...

    def is_alive(self) -> bool: ...

    def shutdown(self) -> None: ...


class ServerState:
    def __init__(self, engine: EngineClient, settings: ServerSettings) -> None:
        from runtime.tool_calls.parsers import get_parser

        self.engine, self.settings = engine, settings
        self.tokenizer = engine.tokenizer
        self.info: dict = engine.info
        self.model_path: str = engine.model_path
        self.served_model_name = settings.served_model_name or engine.served_model_name
        self.chat_template = ChatTemplate.for_model(self.model_path, self.tokenizer, settings.chat_template)
        source = self.chat_template.source if self.chat_template else None
        self.tool_parser = get_parser(settings.tool_call_parser, source)
        self.chat_roles = _read_roles(self.chat_template)  # for frontend programs (runtime.lang)
        self.metrics = ServerMetrics(self.served_model_name)
        cfg = engine.config
        self.max_in_flight = cfg.max_running_requests + cfg.max_queued_requests
        self.in_flight = 0
        self.context_length: int = self.info["context_length"]
        self.vocab_size: int = self.info["vocab_size"]
        self.max_prompt_bytes: int = engine.max_prompt_bytes
        self.created = int(time.time())

    # ---- checks --------------------------------------------------------------------
    def check_model(self, name: str | None) -> None:
        if name and name not in (self.served_model_name, self.model_path):
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                                f"{self.served_model_name!r}", param="model", code="model_not_found")

    def acquire(self, num: int) -> None:
        """Admit `num` engine requests or raise 503 with Retry-After (400 if they never fit)."""
        if num > self.max_in_flight:
            raise APIError(400, f"the request needs {num} engine requests (n); this server runs at most "
                                f"{self.max_in_flight} at once", param="n")
        if self.in_flight + num > self.max_in_flight:
            self.metrics.rejected_requests.inc()
            raise APIError(503, f"the server is at capacity ({self.in_flight} requests in flight, "
                                f"limit {self.max_in_flight} = max_running_requests + max_queued_requests); "
                                f"retry later", code="server_overloaded",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        self.in_flight += num
        self.metrics.num_requests_in_flight.set(self.in_flight)

    def release(self, num: int) -> None:
        self.in_flight -= num
        self.metrics.num_requests_in_flight.set(self.in_flight)

    @contextmanager
    def admitted(self, num: int):
        self.acquire(num)
        try:
            yield
        finally:
            self.release(num)

    async def open_streams(self, num: int, openers: list[Callable[[], Awaitable]]) -> tuple[list, "Lease"]:
        """Admit `num` requests and open their streams (`openers`: zero-argument calls that
        return the engine's stream coroutine). If opening fails, nothing stays admitted;
        otherwise the caller releases the lease when the response closes."""
        self.acquire(num)
        lease = Lease(self, num)
        try:
            return [await open_stream() for open_stream in openers], lease
        except BaseException:
            lease.release()
            raise

    # ---- off-loop work ---------------------------------------------------------------
    async def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        check_prompt_text(text, self.max_prompt_bytes)  # before the tokenizer: bad Unicode, megabytes
        return await asyncio.to_thread(self.tokenizer.encode, text, add_special_tokens=add_special_tokens)

    async def render_and_tokenize(self, messages: list[dict], tools: list[dict] | None,
                                  kwargs: dict) -> tuple[str, list[int]]:
        if self.chat_template is None:
            raise APIError(400, "this model has no chat template; start the server with --chat-template FILE "
                                "or use /v1/completions")

        reserved = sorted(set(kwargs) & {"messages", "tools"})
        if reserved:
            raise APIError(400, f"chat_template_kwargs cannot set {reserved}: they come from the request",
                           param="chat_template_kwargs")
        messages, tools = template_input(messages, tools, self.tool_parser.tools_in_prompt)

        def work():
            text = self.chat_template.render(messages, tools, **kwargs)
            check_prompt_text(text, self.max_prompt_bytes, "the rendered chat")
            return text, self.tokenizer.encode(text, add_special_tokens=False)

        return await asyncio.to_thread(work)

    async def engine_call(self, fn, *args):
        """Blocking engine control calls (get_server_info, flush_cache) in a thread."""
        return await asyncio.to_thread(fn, *args)

    def engine_alive(self) -> bool:
        return self.engine.is_alive()

    async def restart_dead_engines(self, start_engine: Callable[[], object]) -> None:
        """--restart-engine-on-failure: when the engine process is gone (its pending
        requests have already failed), start a new one with the same options and serve
        on. Lost: the requests in flight at the time and the prefix cache."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self.engine.is_alive():
                continue
            logger.warning("the engine process is gone; starting a new one (--restart-engine-on-failure)")
            try:
                new = await asyncio.to_thread(start_engine)
            except Exception:  # noqa: BLE001 - keep answering 503 and try again
                logger.exception("restarting the engine failed; retrying")
                continue
            old, self.engine = self.engine, new
            await asyncio.to_thread(old.shutdown)
            self.metrics.engine_restarts.inc()
            logger.info("the engine is serving again")


class Lease:
    """Admission held by a streamed response; released exactly once."""

    def __init__(self, state: ServerState, num: int) -> None:
        self.state, self.num = state, num

    def release(self) -> None:
        if self.num:
            self.state.release(self.num)
            self.num = 0


def _read_roles(template: ChatTemplate | None) -> ChatRoles | None:
    if template is None:
        return None
    try:
        return read_chat_roles(lambda messages, gen: template.render(messages, add_generation_prompt=gen))
    except ValueError:  # TemplateError included: e.g. a template that refuses a system message
        return None
