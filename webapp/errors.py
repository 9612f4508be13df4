"""Errors as JSON: {"error": {"code": ..., "message": ...}} with a 4xx that names the problem.

Bad input must never surface as a 500, so every exception a request can provoke is mapped
here, in one place: ApiError (the web layer's own checks), WireError (malformed tensor
messages), models.errors.InvalidInput (the generation chain's input validation, with its own
code), FastAPI's request validation errors. Anything else, a plain ValueError included, is a
bug: it is logged and the client gets a 500 without internals.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from models.errors import InvalidInput

from .wire import WireError

log = logging.getLogger("webapp")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def describe(exc: Exception) -> tuple[int, str, str, dict]:
    """(status, code, message, headers) for an exception a request provoked: the handlers below
    answer with it, and so does an event stream that fails after it began (webapp.api.events)."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message, exc.headers
    if isinstance(exc, WireError):
        return 400, "bad_tensor_message", str(exc), {}
    if isinstance(exc, InvalidInput):
        return 400, exc.code, exc.message, {}
    log.error("unexpected error", exc_info=exc)
    return 500, "internal_error", "internal error (logged on the server)", {}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"},
                                                              "message": {"type": "string"}}}},
}


def error_responses(*statuses: int) -> dict:
    """OpenAPI `responses` entries for the given error statuses."""
    text = {400: "Bad input (the message names the problem)", 401: "Missing or wrong API token",
            404: "Unknown model, or an endpoint this server's component does not host",
            406: "Accept asks for one image/png but the batch holds several",
            413: "Request body too large", 415: "Wrong content type", 422: "Invalid parameters",
            503: "Queue full or time limit reached; retry after the Retry-After header's seconds"}
    return {s: {"description": text.get(s, "Error"), "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for s in statuses}


class ApiPathsMiddleware:
    """ASGI middleware: every path under /api/ belongs to the REST API. The Gradio UI is mounted
    at "/" and would answer an unknown /api path itself ({"detail": "Not Found"}); here a path
    that no API route matches gets the error envelope: 404, or 405 when only the method is wrong.
    Routes are looked up per request, so those added after install() count too."""

    def __init__(self, app, router, prefix: str = "/api/"):
        self.app, self.router, self.prefix = app, router, prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            best = Match.NONE
            for route in self.router.routes:
                if isinstance(route, Mount) and route.path == "":
                    continue  # the UI at "/" matches everything
                match = route.matches(dict(scope))[0]
                if match == Match.FULL:
                    best = match
                    break
                if match == Match.PARTIAL:
                    best = match
            if best == Match.NONE:
                response = error_response(404, "not_found", f"no API endpoint {scope['path']}; see /api/docs")
                return await response(scope, receive, send)
            if best == Match.PARTIAL:
                response = error_response(405, "method_not_allowed",
                                          f"{scope['method']} is not allowed on {scope['path']}; see /api/docs")
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_middleware(ApiPathsMiddleware, router=app.router)

    @app.exception_handler(ApiError)
    @app.exception_handler(WireError)
    @app.exception_handler(InvalidInput)
    async def _known(_: Request, exc: Exception):
        return error_response(*describe(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return error_response(422, "invalid_parameters", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        return error_response(*describe(exc))
