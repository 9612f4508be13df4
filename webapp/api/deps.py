"""What every handler needs before it reads a body: the Server, and whether it hosts the stage
the request is for (a component server answers 404 not_hosted for the others' routes)."""

from __future__ import annotations

from fastapi import Depends, Request

from ..errors import ApiError


def current_server(request: Request):
    return request.app.state.server


def hosting(stage: str):
    """A dependency: the Server, after checking it hosts `stage` ('pipeline' = txt2img/inpaint)."""

    def dependency(server=Depends(current_server)):
        if not server.hosts(stage):
            what = "txt2img and inpaint" if stage == "pipeline" else f"the {stage!r} stage"
            raise ApiError(404, "not_hosted", f"this server hosts the {server.component!r} component, not {what}; "
                           "send this request to the server that hosts it")
        return server

    dependency.__name__ = f"hosting_{stage}"
    return dependency


def model_for(server, name: str | None) -> str:
    """The model a request runs on: the one it names (from the listing) or the base model,
    never whichever model another client used last."""
    names = server.engine.model_names()
    if name and name not in names:
        raise ApiError(404, "unknown_model", f"unknown model {name!r}; available: {names}")
    return name or server.engine.info()["base_model"]
