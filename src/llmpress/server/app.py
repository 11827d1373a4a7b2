"""The FastAPI app: assembles one served model's context, its routers, errors, middleware, lifespan.

Thin by design: routers (`routers/`) parse and validate, `context.ServerContext` turns requests into
engine sequences and settles their accounts (`accounting`), `streaming` reads the engine's immutable
outputs, `driver` runs the one engine loop, `auth` checks keys, `errors` keeps one error shape.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmpress.engine import LLMEngine
from llmpress.registry.keys import KeyStore
from llmpress.server.accounting import Accounting
from llmpress.server.context import ServerConfig, ServerContext
from llmpress.server.driver import EngineDriver
from llmpress.server.errors import error_json, install_error_handlers
from llmpress.server.metrics import Metrics
from llmpress.server.routers import openai, system

log = logging.getLogger("llmpress.server")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")

__all__ = ["ServerConfig", "create_app"]


def create_app(engine: LLMEngine, config: ServerConfig,
               engine_loop: Literal["background", "caller"] = "background") -> FastAPI:
    """Build the app around an engine. `engine_loop="background"`: the lifespan starts the one engine
    thread; `"caller"`: the owner runs `app.state.driver.run_here()` (what `llmpress serve` does)."""
    keys = KeyStore() if config.auth else None
    metrics = Metrics(engine)
    driver = EngineDriver(engine, engine_loop)
    # a reservation outlives its request only if the server died; it expires a minute after the longest request
    ttl = (config.request_timeout or 3600.0) + 60.0
    ctx = ServerContext(engine, driver, config, metrics, keys, Accounting(keys, metrics, config.model_name, ttl))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if keys is not None:
            reclaimed = await asyncio.to_thread(keys.reclaim_expired)
            if reclaimed:
                log.info("released %d expired budget reservations", reclaimed)
        driver.start()
        log.info("engine started", extra={"model": config.model_name})
        try:
            yield
        finally:
            ctx.draining = True
            deadline = time.monotonic() + config.drain_timeout
            while (ctx.inflight or engine.has_work()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            driver.stop()
            log.info("engine stopped", extra={"model": config.model_name})

    app = FastAPI(title="llmpress", version="0.2", lifespan=lifespan)
    app.state.engine = engine
    app.state.driver = driver
    app.state.context = ctx
    app.state.metrics = metrics
    install_error_handlers(app)

    app.add_middleware(_Observe, ctx=ctx)
    app.include_router(system.router(ctx))
    app.include_router(openai.router(ctx))
    return app


class _Observe:
    """Request id (the client's if valid, else ours), in-flight count, metrics and one JSON log line.

    A plain ASGI middleware, not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware hides the
    client's `http.disconnect` from the endpoint, so a non-streaming request never noticed a hang-up.
    """

    def __init__(self, app: ASGIApp, ctx: ServerContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = Headers(scope=scope).get("x-request-id")
        if rid is not None and not REQUEST_ID.fullmatch(rid):
            await error_json(400, "x-request-id must be 1-64 characters of letters, digits and . _ : -",
                             "invalid_request_error", "x-request-id", "invalid_request_id")(scope, receive, send)
            return
        rid = rid or uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        self.ctx.inflight += 1
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.ctx.inflight -= 1
            path = scope["path"]
            if path not in ("/metrics", "/health", "/ready"):
                self.ctx.metrics.requests.labels(path, str(status["code"])).inc()
                log.info("request", extra={"request_id": rid, "method": scope["method"], "path": path,
                                           "status": status["code"],
                                           "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
                                           "key_id": scope["state"].get("key_id")})
