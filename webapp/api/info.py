"""GET /health (open: load balancers probe it) and GET /models (what this server runs)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .deps import current_server

open_router = APIRouter()
router = APIRouter()


@open_router.get("/health", summary="Liveness and queue state (no token needed); on a front end also its "
                 "stage servers' health", responses={503: {"description": "a front end with a stage server down "
                                                           "or failing: the same body, status 'unavailable'"}})
async def health(server=Depends(current_server)):
    body = {"status": "ok", "component": server.component, "queue": server.gate.stats()}
    if hasattr(server.engine, "warm_up_status"):  # compiling at start (models/warm_up.py): served meanwhile
        body["warm_up"] = server.engine.warm_up_status()
    if hasattr(server.engine, "batching_status"):  # requests sharing UNet calls (models/step_batcher.py)
        body["batching"] = server.engine.batching_status()
    if getattr(server.engine, "remote", False):  # a front end is up only when its stage servers are
        body["upstreams"] = await server.engine.upstream_health()
        if any(u["status"] != "ok" for u in body["upstreams"].values()):
            return JSONResponse({**body, "status": "unavailable"}, status_code=503)
    return body


@router.get("/models", summary="Base and fine-tuned diffusion models, latent and context facts")
async def models(server=Depends(current_server)):
    info = {**server.engine.info(), "component": server.component}
    manifest = server.exports_manifest()
    info.update(edge_exports=manifest is not None, edge_manifest=manifest)
    L = server.limits  # what a client may ask for (the edge page sizes its controls by them)
    info["limits"] = {"max_steps": L.max_steps, "max_batch": L.max_batch, "max_side": L.max_side,
                      "max_prompt_chars": L.max_prompt_chars, "max_guidance": L.max_guidance}
    return info
