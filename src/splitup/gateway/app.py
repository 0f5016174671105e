"""The gateway's HTTP app: the OpenAI-compatible API, the console's JSON API and the console's files."""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from splitup.gateway import views
from splitup.gateway.openai_api import Arrival
from splitup.gateway.openai_api import router as openai_router
from splitup.gateway.service import GatewayService

# The console's files (package data of splitup.console) and their types; nothing else is served.
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


def _asset(name: str) -> bytes:
    return resources.files("splitup.console").joinpath(name).read_bytes()


def create_app(svc: GatewayService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        svc.start()
        try:
            yield
        finally:
            svc.stop()

    app = FastAPI(title="SplitUp gateway", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.include_router(openai_router(svc))
    app.add_middleware(Arrival, svc=svc)  # admission's first look, before routing and the body

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    async def view(fn: Any) -> Any:
        # Chain reads block on the RPC node: keep them off the event loop.
        try:
            return await run_in_threadpool(fn, svc)
        except Exception as exc:
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=503)

    @app.get("/api/overview")
    async def overview() -> Any:
        return await view(views.overview)

    @app.get("/api/models")
    async def models() -> Any:
        return await view(views.models)

    @app.get("/api/nodes")
    async def nodes() -> Any:
        return await view(views.nodes)

    @app.get("/api/jobs")
    async def jobs() -> Any:
        return await view(views.jobs)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(_asset("index.html"))

    @app.get("/console/{name}")
    def asset(name: str) -> Response:
        if name not in STATIC:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(_asset(name), media_type=STATIC[name], headers={"cache-control": "no-cache"})

    return app
