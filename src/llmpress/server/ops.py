"""Operating hooks on a served model: A/B arm, response cache, feedback, and the series dashboards join on.

`install_ops(app, config, artifact)` adds to an app built by `create_app`:
- `POST /v1/feedback` (router `routers/feedback.py`): feedback against the arm that served a response;
- A/B: when the server is one arm of a running test (`serve ARM --ab TEST`), every completion is recorded
  in the registry under that arm (status, TTFT, latency, tokens), and its response carries the arm and
  the response id (headers `x-llmpress-arm`, `x-llmpress-ab-test`, `x-llmpress-response-id`; non-streamed
  JSON also an `llmpress` field). Arms are separate deployments sharing one registry; whoever routes
  traffic (a load balancer, the gateway) picks the arm with `llmpress.ops.ab.AbTest.assign(user)`;
- an exact-match response cache for non-streamed temperature-0 requests (`llmpress.ops.cache`); a hit
  still verifies the API key and its scope and writes a usage row (0 tokens: nothing was generated);
- metrics: `llmpress_model_info{model,artifact_id,alias,ab_test,arm}` (join on instance for per-model and
  per-arm panels), `llmpress_queue_capacity`, `llmpress_budget_rejections_total`,
  `llmpress_ab_responses_total{ab_test,arm,status}`, `llmpress_ab_feedback_total` / `llmpress_ab_feedback_rating_points_total`, cache series.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Counter, Gauge

from llmpress.errors import ConfigError, LlmpressError
from llmpress.ops.cache import CacheConfig, ResponseCache

log = logging.getLogger("llmpress.server")

GENERATE_PATHS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
SCOPE = {"completions": "completions", "chat": "chat"}


@dataclass
class OpsConfig:
    """What `llmpress serve` turns on besides the model: an A/B arm, the response cache, the alias served."""

    ab_test: str | None = None  # this server is one arm of this running A/B test
    arm: str | None = None  # which arm (default: the arm pinned to the served artifact)
    cache: CacheConfig | None = None  # None: no response cache
    alias: str | None = None  # the alias the server was started with (for model_info and deployments)


def strip_prefix(response_id: str) -> str:
    """A completion id (`cmpl-<request id>`, `chatcmpl-<request id>`) or the bare request id -> request id."""
    for p in ("chatcmpl-", "cmpl-"):
        if response_id.startswith(p):
            return response_id[len(p):]
    return response_id


def install_ops(app: FastAPI, config: OpsConfig, artifact_id: str) -> None:
    """Add the feedback route, the A/B and cache middleware and the ops metrics to `app` (before it starts)."""
    from llmpress.ops import ab
    from llmpress.server.routers import feedback

    ctx = app.state.context
    metrics = app.state.metrics
    reg = metrics.registry
    test = arm = None
    if config.ab_test:
        test = ab.load(config.ab_test)
        if test.status != "running":
            raise ConfigError(f"A/B test {test.name!r} is stopped", "start a new one with `llmpress ab start`")
        if config.arm:
            arm = test.arm(config.arm)
        else:
            arm = next((a for a in test.arms if a.artifact_id == artifact_id), None)
        if arm is None or arm.artifact_id != artifact_id:
            pinned = ", ".join(f"{a.name}={a.artifact_id}" for a in test.arms)
            raise ConfigError(f"this server's artifact {artifact_id} is not "
                              f"{'arm ' + repr(config.arm) if config.arm else 'an arm'} of A/B test {test.name!r} "
                              f"({pinned})", "serve the artifact the arm was pinned to, or pass the right --arm")
    info = Gauge("llmpress_model_info", "The model this server serves (value 1; join on instance)",
                 ["model", "artifact_id", "alias", "ab_test", "arm"], registry=reg)
    info.labels(ctx.config.model_name, artifact_id, config.alias or "", test.name if test else "",
                arm.name if arm else "").set(1)
    cap = Gauge("llmpress_queue_capacity", "Bound of the request queue (queue depth / capacity = saturation)",
                registry=reg)
    cap.set(ctx.engine.config.max_waiting)
    budget_rejections = Counter("llmpress_budget_rejections", "Requests refused because the key's token budget "
                                "is spent", registry=reg)
    ab_responses = Counter("llmpress_ab_responses", "Responses served in an A/B test", ["ab_test", "arm", "status"],
                           registry=reg)
    fb_count = Counter("llmpress_ab_feedback", "Feedback received in an A/B test", ["ab_test", "arm"], registry=reg)
    fb_sum = Counter("llmpress_ab_feedback_rating_points", "Sum of feedback ratings (mean = points / feedback)",
                     ["ab_test", "arm"], registry=reg)
    cache = ResponseCache(config.cache) if config.cache is not None else None
    if cache is not None:
        cache.register_metrics(reg)
    app.state.response_cache = cache
    app.state.ab_arm = arm

    # -- A/B: record every settled generation under this server's arm --------------------------
    users: dict[str, str] = {}  # request id -> `user` of the request, until it settles
    if test is not None and arm is not None:
        def record(charge: Any, tokens_in: int, tokens_out: int, status: int, ttfts: list[float]) -> None:
            ab_responses.labels(test.name, arm.name, str(status)).inc()
            ab.record_response(test.name, charge.request_id, arm.name, users.pop(charge.request_id, None), status,
                               ttft_ms=ttfts[0] * 1000 if ttfts else None,
                               latency_ms=(time.perf_counter() - charge.t0) * 1000, tokens_out=tokens_out)

        ctx.accounting.observers.append(record)

    app.include_router(feedback.router(ctx, lambda t, a, r: (fb_count.labels(t, a).inc(),
                                                            fb_sum.labels(t, a).inc(r or 0.0))))

    @app.middleware("http")
    async def _ops(request: Request, call_next: Any) -> Response:
        endpoint = GENERATE_PATHS.get(request.url.path)
        if endpoint is None or request.method != "POST":
            return await call_next(request)
        body: dict[str, Any] | None = None
        raw = await request.body()
        try:
            parsed = json.loads(raw) if raw else None
            body = parsed if isinstance(parsed, dict) else None
        except ValueError:
            body = None
        # this middleware runs before the one that assigns request ids: assign it here, the same way
        rid = request.headers.get("x-request-id")
        if rid is None:
            rid = uuid.uuid4().hex[:16]
            request.scope["headers"] = [*request.scope["headers"], (b"x-request-id", rid.encode())]
        if body is not None and body.get("user") is not None and arm is not None:
            users[rid] = str(body["user"])[:255]
        ckey = None
        if cache is not None and body is not None and not body.get("stream"):
            header = request.headers.get("authorization", "")
            secret = header[7:].strip() if header.lower().startswith("bearer ") else None
            scope = None
            if ctx.keys is not None:  # a hit must pass the same key checks as a miss
                try:
                    key = await asyncio.to_thread(ctx.keys.verify, secret)
                except LlmpressError:
                    key = None  # let the route answer the auth error
                if key is not None and SCOPE[endpoint] not in key.scopes and "admin" not in key.scopes:
                    key = None
                scope = key.id if key else None
                if key is None:
                    return await call_next(request)
            ckey = cache.key(artifact_id, endpoint, body, scope)
            hit = cache.get(ckey) if ckey else None
            if hit is not None:
                if ctx.keys is not None and scope is not None:
                    await asyncio.to_thread(ctx.keys.record_usage, scope, rid, ctx.config.model_name,
                                            endpoint + ":cache", 0, 0, 0.0, 200)
                resp = Response(hit, media_type="application/json", headers={"x-llmpress-cache": "hit"})
                return _tag(resp, rid, test, arm)
        response = await call_next(request)
        if not body_is_stream(response):
            users.pop(rid, None)  # settled already (or never admitted)
        if response.status_code == 429 and not body_is_stream(response):
            payload = await _read(response)
            if b"insufficient_quota" in payload:
                budget_rejections.inc()
            return Response(payload, status_code=429, headers=_plain_headers(response),
                            media_type=response.media_type)
        if response.status_code != 200 or body is None or body.get("stream") or (ckey is None and arm is None):
            return _tag(response, rid, test, arm)
        payload = await _read(response)
        if arm is not None:
            try:
                doc = json.loads(payload)
                doc["llmpress"] = {"response_id": rid, "ab_test": test.name if test else None, "arm": arm.name}
                payload = json.dumps(doc).encode()
            except ValueError:
                pass
        if ckey is not None and cache is not None:
            cache.put(ckey, payload)
            extra = {"x-llmpress-cache": "miss"}
        else:
            extra = {}
        resp = Response(payload, status_code=200, headers={**_plain_headers(response), **extra},
                        media_type="application/json")
        return _tag(resp, rid, test, arm)

    def _tag(resp: Response, rid: str, test: Any, arm: Any) -> Response:
        if arm is not None:
            resp.headers["x-llmpress-arm"] = arm.name
            resp.headers["x-llmpress-ab-test"] = test.name
            resp.headers["x-llmpress-response-id"] = rid
        return resp


def body_is_stream(response: Response) -> bool:
    return (response.headers.get("content-type") or "").startswith("text/event-stream")


async def _read(response: Any) -> bytes:
    chunks = [c if isinstance(c, bytes) else c.encode() async for c in response.body_iterator]
    return b"".join(chunks)


def _plain_headers(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}

