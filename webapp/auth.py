"""Who may call the API and the UI: an optional token and a CORS allow-list.

The token comes from the environment (SD_API_TOKEN, or --token-env NAME) and is compared in
constant time (hmac.compare_digest). Clients send `Authorization: Bearer <token>` or
`X-API-Token: <token>`. With no token configured everything is open (a local demo). With a
token the Gradio UI and every route of its own (config, uploads, files, queue) need it too: a
browser signs in once at /login (the token is the password) and gets a session cookie;
gradio_client sends the header or signs in with `auth=(any name, token)`. Health, the static
mounts (/edge, /exports) and the API docs stay open.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import os
import urllib.parse

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from .errors import ApiError, error_response

TOKEN_ENV = "SD_API_TOKEN"
CORS_ENV = "SD_CORS_ORIGINS"
SESSION_COOKIE = "sd_ui_session"


def token_from_env(name: str = TOKEN_ENV) -> str | None:
    value = os.environ.get(name, "")
    return value or None


def presented_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-token")


def check_token(request: Request, expected: bytes) -> None:
    """ApiError 401 unless the request carries the token."""
    got = presented_token(request)
    if got is None:
        raise ApiError(401, "missing_token", "this API needs a token: send 'Authorization: Bearer <token>'",
                       {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(got.encode("utf-8", "surrogateescape"), expected):
        raise ApiError(401, "wrong_token", "the API token is wrong", {"WWW-Authenticate": "Bearer"})


def make_dependency(token: str | None):
    """A FastAPI dependency that raises 401 unless the request carries the token."""
    expected = token.encode() if token else None

    async def require_token(request: Request):
        if expected is not None:
            check_token(request, expected)

    return require_token


class RequireApiToken:
    """ASGI middleware: with a token, every path under /api/v1/ but health needs it before the
    route sees the request. The dependency alone runs after FastAPI has parsed the body, so a
    malformed JSON body got its 422 without the token, and a multipart form was parsed (and
    spooled) for anyone."""

    OPEN = ("/api/v1/health",)

    def __init__(self, app, token: str):
        self.app, self.expected = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/api/v1/") and scope["path"] not in self.OPEN:
            try:
                check_token(Request(scope), self.expected)
            except ApiError as e:
                return await error_response(e.status, e.code, e.message, e.headers)(scope, receive, send)
        return await self.app(scope, receive, send)


def cors_origins(flag: str | None) -> list[str]:
    raw = flag if flag is not None else os.environ.get(CORS_ENV, "")
    return [o.strip() for o in raw.split(",") if o.strip()]


def install_cors(app: FastAPI, origins: list[str]) -> None:
    """Only the listed origins may call the app from a browser; none by default. The middleware
    is installed even with an empty list: Gradio then leaves CORS to it (it answers localhost
    origins itself otherwise), so this policy covers the UI's routes too."""
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                       allow_headers=["Authorization", "X-API-Token", "Content-Type"],
                       expose_headers=["X-Seeds", "Retry-After"], max_age=600)


# -- the UI behind the token -------------------------------------------------------------
def session_value(token: str) -> str:
    """The session cookie's value: derived from the token, so the cookie is not the token."""
    return hmac.new(token.encode(), b"sd-webapp ui session", hashlib.sha256).hexdigest()


def _matches(got: str | None, want: str) -> bool:
    return got is not None and hmac.compare_digest(got.encode("utf-8", "surrogateescape"), want.encode())


class RequireUISession:
    """ASGI wrapper around the mounted Gradio app: every request that reaches Gradio (page,
    config, assets, uploads, files, queue, SSE) carries the token (header) or the session
    cookie, or gets 401 (the page itself: a redirect to /login). Wrapping the mount, not
    listing Gradio's routes, leaves no route of Gradio's own unguarded."""

    def __init__(self, app, token: str):
        self.app, self.token, self.session = app, token, session_value(token)

    def allowed(self, request: Request) -> bool:
        return _matches(presented_token(request), self.token) or _matches(
            request.cookies.get(SESSION_COOKIE), self.session)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.allowed(Request(scope)):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        if scope["method"] == "GET" and scope["path"] == "/":
            response = RedirectResponse("/login", 303)
        else:
            response = error_response(401, "login_required", "this server needs its API token: sign in at "
                                      "/login or send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in</title>
<meta name="viewport" content="width=device-width"></head>
<body style="font-family: system-ui, sans-serif; max-width: 24em; margin: 4em auto">
<h2>Stable Diffusion, cloud and edge</h2><p>This server needs its API token.</p>
<form method="post" action="/login"><input type="password" name="password" placeholder="API token"
 autofocus required> <button type="submit">Sign in</button></form><p style="color: #b00">{note}</p></body></html>"""


def install_ui_login(app: FastAPI, token: str) -> None:
    """GET/POST /login and GET /logout on the parent app (ahead of the Gradio mount). The form's
    `password` is the token (gradio_client's `auth=(name, token)` posts the same form; the name
    is ignored). The cookie is HttpOnly and SameSite=Strict, so other sites cannot ride on it."""
    from .limits import read_body

    def page(note="", status=200):
        return HTMLResponse(LOGIN_PAGE.format(note=html.escape(note)), status)

    @app.get("/login", include_in_schema=False)
    async def login_page():
        return page()

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = urllib.parse.parse_qs((await read_body(request, 4096)).decode("utf-8", "replace"))
        if not _matches((form.get("password") or [""])[0], token):
            return page("That is not this server's token.", 401)
        browser = "text/html" in request.headers.get("accept", "")
        response = RedirectResponse("/", 303) if browser else JSONResponse({"success": True})
        response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/logout", include_in_schema=False)
    async def logout():
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response
