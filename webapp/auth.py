"""Who may call the API: an optional token and a CORS allow-list.

The token comes from the environment (SD_API_TOKEN, or --token-env NAME) and is compared in
constant time (hmac.compare_digest). Clients send `Authorization: Bearer <token>` or
`X-API-Token: <token>`. With no token configured the API is open (a local demo). The
Gradio UI and the static mounts are not behind the token (a Space is public by design);
health stays open for load balancers.
"""

from __future__ import annotations

import hmac
import os

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from .errors import ApiError

TOKEN_ENV = "SD_API_TOKEN"
CORS_ENV = "SD_CORS_ORIGINS"


def token_from_env(name: str = TOKEN_ENV) -> str | None:
    value = os.environ.get(name, "")
    return value or None


def presented_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-token")


def make_dependency(token: str | None):
    """A FastAPI dependency that raises 401 unless the request carries the token."""
    expected = token.encode() if token else None

    async def require_token(request: Request):
        if expected is None:
            return
        got = presented_token(request)
        if got is None:
            raise ApiError(401, "missing_token", "this API needs a token: send 'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(got.encode("utf-8", "surrogateescape"), expected):
            raise ApiError(401, "wrong_token", "the API token is wrong", {"WWW-Authenticate": "Bearer"})

    return require_token


def cors_origins(flag: str | None) -> list[str]:
    raw = flag if flag is not None else os.environ.get(CORS_ENV, "")
    return [o.strip() for o in raw.split(",") if o.strip()]


def install_cors(app: FastAPI, origins: list[str]) -> None:
    """Only the listed origins may call the API from a browser; none by default."""
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Token", "Content-Type"],
                           expose_headers=["X-Seeds", "Retry-After"], max_age=600)
