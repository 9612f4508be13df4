"""The application factory: one FastAPI app with the REST API, static mounts and Gradio UI.

    app = create_app(Config(model="tiny"))          # all in one
    app = create_app(Config(model="tiny", component="diffusion"))
    app = create_app(Config(text_encoder_url=..., diffusion_url=..., decoder_url=...))  # front end
"""

from __future__ import annotations

import dataclasses
import logging
import os

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount

from . import auth, docs, errors
from .limits import BodyLimitMiddleware, Gate, Limits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPONENTS = ("all", "text_encoder", "diffusion", "decoder")
STAGES = {"all": {"text_encoder", "diffusion", "decoder", "pipeline"}, "text_encoder": {"text_encoder"},
          "diffusion": {"diffusion"}, "decoder": {"decoder"}}
# The networks each server loads: a component server holds only its own stage's (the decoder
# server also hosts /encode_image, the VAE encoder).
NETWORKS = {"all": None, "text_encoder": ("text_encoder",), "diffusion": ("unet",), "decoder": ("decoder", "encoder")}
log = logging.getLogger("webapp")


@dataclasses.dataclass
class Config:
    model: str = "tiny"
    unet: str | None = None
    models_dir: str | None = None
    loras_dir: str | None = None  # every .safetensors LoRA there, checked at start, selectable per request
    component: str = "all"
    text_encoder_url: str | None = None
    diffusion_url: str | None = None
    decoder_url: str | None = None
    exports: str | None = None
    edge_dir: str | None = None
    ui: bool = True
    token: str | None = None  # None: read SD_API_TOKEN
    cors: str | None = None  # comma-separated origins; None: read SD_CORS_ORIGINS
    limits: Limits = dataclasses.field(default_factory=Limits.from_env)
    split_dtype: str = "float32"
    taesd: str | None = None  # a TAESD for the UI's progress previews (else the decoder at preview size)
    runtime: str = "tensorflow"  # what runs the networks: "tensorflow" or "openvino" (models/openvino_runtime.py)
    dtype: str | None = None  # the networks' dtype: None (as stored, computed in float32) or "bfloat16"
    # compile every piece a request can reach in the background at start (models/warm_up.py);
    # `python -m webapp` turns it on (--no-warm-up off), an app made in code (tests) leaves it off
    warm_up: bool = False

    @property
    def is_frontend(self) -> bool:
        return bool(self.text_encoder_url or self.diffusion_url or self.decoder_url)


class Server:
    """What the routes and the UI share: the engine, the gate, the limits, the component."""

    def __init__(self, config: Config, engine=None):
        self.config = config
        self.limits = config.limits
        self.component = "frontend" if config.is_frontend else config.component
        if config.component not in COMPONENTS:
            raise ValueError(f"--component must be one of {COMPONENTS}, got {config.component!r}")
        self.engine = engine or self._make_engine()
        if engine is not None and config.loras_dir:
            engine.load_loras_dir(config.loras_dir)
        self.gate = Gate(self.limits, at_least=getattr(self.engine, "batch_requests", 1))
        if config.warm_up and hasattr(self.engine, "start_warm_up"):
            self.engine.start_warm_up()
        token = config.token if config.token is not None else auth.token_from_env()
        self.token = token or None
        self.require_token = auth.make_dependency(token)
        self.token_required = bool(token)

    def hosts(self, stage: str) -> bool:
        """'pipeline' (txt2img, inpaint) runs on an all-in-one server or a front end; the three
        stages on an all-in-one server or on the component server that hosts them."""
        if self.component == "frontend":
            return stage == "pipeline"
        return stage in STAGES[self.component]

    def _make_engine(self):
        c = self.config
        if c.is_frontend:
            missing = [n for n in ("text_encoder_url", "diffusion_url", "decoder_url") if not getattr(c, n)]
            if missing:
                raise ValueError(f"a front end needs all three stage URLs; missing {missing}")
            if c.loras_dir:
                raise ValueError("a front end runs no network, so --loras-dir belongs on its text-encoder and "
                                 "diffusion servers (it lists and forwards their LoRAs)")
            from .split_client import RemoteEngine

            return RemoteEngine(c.text_encoder_url, c.diffusion_url, c.decoder_url, token=auth.token_from_env(),
                                dtype=c.split_dtype, timeout_s=self.limits.timeout_s + 30,
                                batch_requests=self.limits.batch_requests)
        from models import load_pipeline

        from .engine import LocalEngine

        pipe = load_pipeline(c.model, unet=c.unet, parts=NETWORKS[c.component],
                             taesd=c.taesd if c.component == "all" else None, runtime=c.runtime, dtype=c.dtype)
        name = os.path.basename(os.path.normpath(c.model)) if c.model != "tiny" else "tiny"
        return LocalEngine(pipe, base_name=name, models_dir=c.models_dir, loras_dir=c.loras_dir,
                           batch_requests=self.limits.batch_requests, max_rows=self.limits.max_batch)

    def exports_manifest(self) -> str | None:
        d = self.exports_dir()
        return "/exports/manifest.json" if d and os.path.isfile(os.path.join(d, "manifest.json")) else None

    def exports_dir(self) -> str | None:
        if self.config.exports:
            return self.config.exports
        # build/exports/<model name> (scripts/demo.sh makes it); the folder may appear after start.
        # The embedded default model falls back to the edge files bundled beside its weights, so
        # /edge/ works on a Space, in the container and from a plain clone without an export step.
        name = os.path.basename(os.path.normpath(self.config.model))
        built = os.path.join(REPO, "build", "exports", name)
        if self.config.model == "tiny" and not os.path.isfile(os.path.join(built, "manifest.json")):
            from models.checkpoints.tiny import BUNDLED_EDGE_DIR

            if os.path.isfile(os.path.join(BUNDLED_EDGE_DIR, "manifest.json")):
                return BUNDLED_EDGE_DIR
        return built


class OptionalStatic:
    """StaticFiles over a folder that may not exist yet: a clear 404 text until it does."""

    def __init__(self, directory: str | None, what: str):
        self.directory, self.what, self._app = directory, what, None

    async def __call__(self, scope, receive, send):
        if self._app is None and self.directory and os.path.isdir(self.directory):
            self._app = StaticFiles(directory=self.directory, html=True)
        if self._app is None:
            why = f"{self.directory} does not exist" if self.directory else "no folder is configured"
            response = PlainTextResponse(f"404: {self.what} not available on this server ({why})", status_code=404)
            return await response(scope, receive, send)
        return await self._app(scope, receive, send)


def create_app(config: Config | None = None, engine=None) -> FastAPI:
    config = config or Config()
    server = Server(config, engine)
    app = FastAPI(title="Stable Diffusion, cloud and edge", version="1",
                  description="REST API of the split Stable Diffusion deployment. Split stages: encode (text encoder), "
                              "diffuse (UNet loop), decode (VAE decoder); all-in-one: txt2img, inpaint. "
                              "Binary tensors use application/x-safetensors (see the diffuse operation).",
                  docs_url=None, redoc_url=None)  # webapp.docs serves both pages, offline
    app.state.server = server
    errors.install(app)
    docs.install(app)
    from .api import build_routers

    for router in build_routers(server):
        app.include_router(router)
    if server.token:
        app.add_middleware(auth.RequireApiToken, token=server.token)
    app.add_middleware(BodyLimitMiddleware, limit=config.limits.max_body_bytes)
    auth.install_cors(app, auth.cors_origins(config.cors))

    edge = config.edge_dir or os.path.join(REPO, "edge", "web")
    app.mount("/edge", OptionalStatic(edge, "the browser client (edge/web/) is"), name="edge")
    app.mount("/exports", OptionalStatic(server.exports_dir(), "the edge model exports are"), name="exports")

    @app.get("/api", include_in_schema=False)
    async def api_root():
        return JSONResponse({"openapi": "/openapi.json", "docs": docs.DOCS, "redoc": docs.REDOC,
                             "health": "/api/v1/health"})

    if config.ui and server.component in ("all", "frontend"):
        import gradio as gr

        from .gradio_guard import GradioGuard
        from .ui import build_ui, launch_kwargs

        if server.token:
            auth.install_ui_login(app, server.token)  # before the mount at "/", which takes every path
        demo = build_ui(server)
        app = gr.mount_gradio_app(app, demo, path="/", max_file_size=config.limits.max_body_bytes, **launch_kwargs())
        # Gradio checks the paths a client names in a FileData only for launched Blocks, and
        # mount_gradio_app never marks them so: any file the server can read would be copied
        # to the cache and served. Launch and swap_blocks set this flag; so do we.
        demo.has_launched = True
        ui = next(r for r in app.routes if isinstance(r, Mount) and r.path == "")
        ui.app = GradioGuard(ui.app)  # 4xx, not 500, for the bad requests Gradio raises on; no URL fetching
        if server.token:
            ui.app = auth.RequireUISession(ui.app, server.token)
    return app
