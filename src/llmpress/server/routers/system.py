"""Health, readiness, Prometheus metrics, and the seeds' simple /generate contract."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmpress.engine import SamplingParams
from llmpress.server.auth import require
from llmpress.server.context import ServerContext
from llmpress.server.errors import error_json, error_responses
from llmpress.server.schemas import ErrorResponse, GenerateRequest, GenerateResponse, Health, Ready


def router(ctx: ServerContext) -> APIRouter:
    r = APIRouter()

    @r.get("/health", response_model=Health,
           responses={503: {"model": ErrorResponse, "description": "The engine is unhealthy: restart the process"}})
    async def health() -> Any:
        if not ctx.engine.healthy:
            return error_json(503, f"unhealthy: {ctx.engine.unhealthy}", "server_error")
        return {"status": "ok"}

    @r.get("/ready", response_model=Ready,
           responses={503: {"model": ErrorResponse,
                            "description": "Draining, the engine loop not running (yet), or the engine unhealthy"}})
    async def ready() -> Any:
        eng = ctx.engine
        why = ("draining" if ctx.draining else "engine not running" if not ctx.driver.alive
               else f"engine unhealthy: {eng.unhealthy}" if not eng.healthy else None)
        if why:
            return error_json(503, f"not ready: {why}", "server_error" if "unhealthy" in why else "overloaded_error",
                              headers={"Retry-After": "2"})
        return {"status": "ready", "waiting": eng.num_waiting, "running": eng.num_running}

    @r.get("/metrics", response_class=Response,
           responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                            "description": "Prometheus text exposition format"}})
    async def prom() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @r.post("/generate", response_model=GenerateResponse, responses=error_responses(400, 401, 403, 422, 429, 500,
                                                                                    503, 504))
    async def generate(req: GenerateRequest, request: Request, key: Any = require(ctx.keys, "completions")) -> Any:
        """The seeds' contract: `max_length` counts new tokens."""
        ids = ctx.encode_prompt(req.prompt)

        def make(j: int) -> SamplingParams:
            return SamplingParams(max_tokens=req.max_length, temperature=req.temperature,
                                  timeout=ctx.config.request_timeout)

        return await ctx.serve(request, key, "generate", ids, make, 1, None,
                               lambda handle: GenerateResponse(generated_text=handle.choices[0].text))

    return r

