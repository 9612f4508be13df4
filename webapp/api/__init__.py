"""The REST API under /api/v1/: the split stages (encode, diffuse, decode, encode_image), the
all-in-one endpoints (txt2img, inpaint), health and models.

Each route is a module-level handler that takes the Server through a dependency
(webapp.api.deps), so a handler reads top to bottom on its own and a test can call it with a
stand-in server. This module only assembles them: health stays open for load balancers,
everything else is behind the API token.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from . import generate, info, stages


def build_routers(server) -> list:
    """`server` is webapp.server.Server. Returns the open router and the token-protected one."""
    open_router = APIRouter(prefix="/api/v1")
    open_router.include_router(info.open_router)
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(server.require_token)])
    for part in (info.router, stages.router, generate.router):
        router.include_router(part)
    return [open_router, router]
