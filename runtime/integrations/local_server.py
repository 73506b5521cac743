"""The runtime inside the caller's process for agent frameworks: an `Engine` (its engine
process is a child of this one) behind our own OpenAI-compatible app, served by uvicorn on
a loopback port from a daemon thread. The framework classes talk to it with their usual
OpenAI clients, so tool calls, strict structured output, streaming and usage are exactly
the server's (one implementation), with nothing for the user to start.

    with LocalServer() as server:          # the default model
        server.url                         # http://127.0.0.1:PORT (OpenAI API under /v1)
"""

from __future__ import annotations

import threading
import time
from typing import Any

from runtime.engine.process import free_port

START_TIMEOUT_S = 60  # after the engine is up: uvicorn binding the port


class LocalServer:
    def __init__(self, model_path: str | None = None, served_model_name: str | None = None,
                 **engine_options: Any) -> None:
        import uvicorn

        from runtime.engine.api import Engine
        from runtime.server.app import create_app
        from runtime.server.state import ServerSettings

        self.engine = Engine(model_path, **engine_options)
        try:
            port = free_port()
            settings = ServerSettings(port=port, served_model_name=served_model_name)
            app = create_app(self.engine, settings)
            self.model = app.state.server.served_model_name
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                    timeout_graceful_shutdown=2)
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(target=self._server.run, name="radixflow-local-server", daemon=True)
            self._thread.start()
            deadline = time.monotonic() + START_TIMEOUT_S
            while not self._server.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the local Radixflow server did not start on port {port}")
                time.sleep(0.02)
        except BaseException:
            self.engine.shutdown()
            raise
        self.url = f"http://127.0.0.1:{port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    def close(self) -> None:
        """Stop the HTTP server, then the engine (idempotent)."""
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self.engine.shutdown()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def served_model(base_url: str) -> tuple[str, int]:
    """(model id, context length) of the first model an OpenAI-compatible server lists
    (`GET {base_url}/models`, base_url ending in /v1)."""
    import httpx

    response = httpx.get(f"{base_url.rstrip('/')}/models", timeout=30)
    response.raise_for_status()
    model = response.json()["data"][0]
    return model["id"], int(model.get("max_model_len") or 4096)
