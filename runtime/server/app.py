"""HTTP routes (only routes: the work is in openai_chat, openai_completions,
native_serving). `create_app(engine, settings)` builds the FastAPI app around a
running `runtime.Engine`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from runtime.server import native_serving, openai_chat, openai_completions
from runtime.server.errors import APIError, install_error_handlers
from runtime.server.metrics import CONTENT_TYPE_LATEST
from runtime.server.middleware import GuardMiddleware
from runtime.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    GenerateRequest,
    TokenizeRequest,
)
from runtime.server.state import EngineClient, ServerSettings, ServerState
from runtime.server.streaming import ClientDisconnected


def _json(result):
    return result if isinstance(result, Response) else JSONResponse(result)


def create_app(engine: EngineClient, settings: ServerSettings | None = None,
               start_engine: Callable[[], EngineClient] | None = None) -> FastAPI:
    """`start_engine` (a new engine with the same options) enables
    `settings.restart_engine_on_failure`."""
    import runtime

    settings = settings or ServerSettings()
    state = ServerState(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        watcher = None
        if settings.restart_engine_on_failure and start_engine is not None:
            watcher = asyncio.create_task(state.restart_dead_engines(start_engine))
        yield
        if watcher is not None:
            watcher.cancel()

    app = FastAPI(title="Radixflow", version=runtime.__version__, lifespan=lifespan,
                  description="OpenAI-compatible and SGLang-native LLM serving")
    app.state.server = state
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, api_key=settings.api_key, max_request_bytes=settings.max_request_bytes)

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected):
        return Response(status_code=499)

    # ---- OpenAI ------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return _json(await openai_chat.create_chat_completion(state, body, request))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return _json(await openai_completions.create_completion(state, body, request))

    def model_card() -> dict:
        return {"id": state.served_model_name, "object": "model", "created": state.created, "owned_by": "radixflow",
                "root": state.model_path, "max_model_len": state.context_length}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str):
        state.check_model(model_id)
        return model_card()

    # ---- SGLang native ---------------------------------------------------------------
    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request):
        return _json(await native_serving.generate(state, body, request))

    @app.get("/get_model_info")
    async def get_model_info():
        return native_serving.model_info(state)

    @app.get("/get_server_info")
    async def get_server_info():
        return await native_serving.server_info(state)

    @app.get("/server_info", include_in_schema=False)
    async def server_info_alias():
        return await native_serving.server_info(state)

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache():
        return PlainTextResponse(await native_serving.flush_cache(state))

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        state.check_model(body.model)
        return await native_serving.tokenize(state, body)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        state.check_model(body.model)
        return await native_serving.detokenize(state, body)

    # ---- operations --------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if not state.engine_alive():
            raise APIError(503, "the engine process is not running")
        return {"status": "ok"}

    @app.get("/health_generate")
    async def health_generate():
        await native_serving.health_generate(state)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        try:
            info = await asyncio.wait_for(state.engine_call(state.engine.get_server_info), 5.0)
            state.metrics.update_engine_state(info)
        except Exception:  # noqa: BLE001 - serve what we have
            pass
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
