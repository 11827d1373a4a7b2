"""The FastAPI app: assembles one served model's context, its routers, errors, middleware, lifespan.

Thin by design: routers (`routers/`) parse and validate, `context.ServerContext` turns requests into
engine sequences and settles their accounts (`accounting`), `streaming` reads the engine's immutable
outputs, `driver` runs the one engine loop, `auth` checks keys, `errors` keeps one error shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI

from llmpress.engine import LLMEngine
from llmpress.registry.keys import KeyStore
from llmpress.server.accounting import Accounting
from llmpress.server.context import ServerConfig, ServerContext
from llmpress.server.driver import EngineDriver
from llmpress.server.errors import install_error_handlers
from llmpress.server.metrics import Metrics
from llmpress.server.observe import Observe, freeze_startup_heap
from llmpress.server.routers import openai, system

log = logging.getLogger("llmpress.server")

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
        frozen = freeze_startup_heap()
        log.info("engine started; %d start-up objects frozen out of GC scans", frozen,
                 extra={"model": config.model_name})
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

    app.add_middleware(Observe, logger=log, tracker=ctx,
                       count=lambda path, code: metrics.requests.labels(path, str(code)).inc())
    app.include_router(system.router(ctx))
    app.include_router(openai.router(ctx))
    return app
