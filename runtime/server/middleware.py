"""Pure-ASGI guard in front of every route: API key (all paths but /health) and a
bound on the request body size (413). Pure ASGI, so streaming responses pass through
untouched."""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.server.errors import error_body

OPEN_PATHS = frozenset({"/health"})


class GuardMiddleware:
    def __init__(self, app: ASGIApp, api_key: str | None, max_request_bytes: int) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            await _reply(scope, receive, send, 401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                         {"WWW-Authenticate": "Bearer"})
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reply(scope, receive, send, 400, "invalid Content-Length header")
                return
            if size > self.max_bytes:
                await _reply(scope, receive, send, 413, self._too_large(size))
                return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            body = await self._read_body(receive)
            if body is None:
                await _reply(scope, receive, send, 413, self._too_large(None))
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get(b"x-api-key", b"").decode("latin-1")
        return hmac.compare_digest(token.encode(), self.api_key.encode())

    def _too_large(self, size: int | None) -> str:
        got = f" ({size} bytes)" if size is not None else ""
        return f"the request body{got} exceeds the limit of {self.max_bytes} bytes (--max-request-bytes)"

    async def _read_body(self, receive: Receive) -> list[Message] | None:
        """Buffer the body (the app parses all of it anyway); None when too large."""
        messages, total = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()  # later calls: wait for http.disconnect

    return replay


async def _reply(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                 headers: dict | None = None) -> None:
    await JSONResponse(error_body(status, message), status_code=status, headers=headers)(scope, receive, send)
