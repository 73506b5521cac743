"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` for every
failure a client can see, and the handlers that turn exceptions into them.

Rule: what a request can cause is a 4xx with a message; a 500 means a bug here.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.core import EngineDeadError

logger = logging.getLogger("radixflow.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 500: "internal_server_error",
          503: "service_unavailable"}


class APIError(Exception):
    """An error with an HTTP status, raised anywhere in request handling."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict:
    return {"error": {"message": message, "type": type or _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code if code is not None else status}}


def error_response(err: APIError) -> JSONResponse:
    body = error_body(err.status, err.message, param=err.param, code=err.code, type=err.type)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def from_exception(exc: BaseException) -> APIError:
    """Map what the engine raises: ValueError is the caller's fault (400)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ValueError):
        return bad_request(str(exc))
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc))
    logger.exception("internal error", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('msg')}", None
    if not loc and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        return ("the request body must be a JSON object (and the Content-Type application/json): "
                f"{first.get('msg')}"), None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return (f"{param}: {msg}" if param else msg) + more, param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return error_response(APIError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)))

    @app.exception_handler(ValueError)
    async def _value(_: Request, exc: ValueError):
        return error_response(bad_request(str(exc)))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        return error_response(from_exception(exc))
