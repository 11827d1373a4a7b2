"""Operating hooks on a served model: A/B arm, response cache, feedback, and the series dashboards join on.

`install_ops(app, config, artifact)` adds to an app built by `create_app`:
- `POST /v1/feedback` (router in `ops/feedback.py`): feedback against the arm that served a response;
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

from fastapi import FastAPI
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


def install_ops(app: FastAPI, config: OpsConfig, artifact_id: str) -> None:
    """Add the feedback route, the A/B and cache middleware and the ops metrics to `app` (before it starts)."""
    from llmpress.ops import ab, feedback

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

    def hit_recorded(rid: str, user: str | None, payload: bytes, t0: float) -> None:
        """A cache hit inside an A/B test is a response the user sees: record it under the arm too."""
        if test is None or arm is None:
            return
        try:
            tokens_out = int(json.loads(payload).get("usage", {}).get("completion_tokens", 0))
        except (ValueError, AttributeError, TypeError):
            tokens_out = 0
        ab_responses.labels(test.name, arm.name, "200").inc()
        ab.record_response(test.name, rid, arm.name, user, 200, ttft_ms=None,
                           latency_ms=(time.perf_counter() - t0) * 1000, tokens_out=tokens_out)

    app.add_middleware(_OpsMiddleware, ctx=ctx, artifact_id=artifact_id, cache=cache, test=test, arm=arm,
                       users=users, budget_rejections=budget_rejections, hit_recorded=hit_recorded)


class _OpsMiddleware:
    """Plain ASGI (like the server's own middleware, so the client's disconnect still reaches the
    endpoint): reads a generation request's JSON body once and replays it, serves cache hits, tags
    A/B responses and adds their `llmpress` field, stores cacheable answers, counts budget refusals."""

    def __init__(self, app: Any, ctx: Any, artifact_id: str, cache: ResponseCache | None, test: Any, arm: Any,
                 users: dict[str, str], budget_rejections: Any, hit_recorded: Any) -> None:
        self.app, self.ctx, self.artifact_id, self.cache = app, ctx, artifact_id, cache
        self.test, self.arm, self.users = test, arm, users
        self.budget_rejections, self.hit_recorded = budget_rejections, hit_recorded

    def _tags(self, rid: str) -> list[tuple[bytes, bytes]]:
        if self.arm is None:
            return []
        return [(b"x-llmpress-arm", self.arm.name.encode()), (b"x-llmpress-ab-test", self.test.name.encode()),
                (b"x-llmpress-response-id", rid.encode())]

    def _annotate(self, payload: bytes, rid: str) -> bytes:
        if self.arm is None:
            return payload
        try:
            doc = json.loads(payload)
        except ValueError:
            return payload
        doc["llmpress"] = {"response_id": rid, "ab_test": self.test.name, "arm": self.arm.name}
        return json.dumps(doc).encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        endpoint = GENERATE_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        raw, disconnected = await _read_body(receive)
        if disconnected:
            return
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body: dict[str, Any] | None = parsed if isinstance(parsed, dict) else None
        headers = dict(scope["headers"])
        # this runs before the middleware that assigns request ids: assign it here, the same way
        rid_b = headers.get(b"x-request-id")
        if rid_b is None:
            rid = uuid.uuid4().hex[:16]
            scope = {**scope, "headers": [*scope["headers"], (b"x-request-id", rid.encode())]}
        else:
            rid = rid_b.decode("latin-1")
        user = str(body["user"])[:255] if body is not None and body.get("user") is not None else None
        if user is not None and self.arm is not None:
            self.users[rid] = user
        ckey, key_id = await self._cache_key(endpoint, body, headers)
        if ckey is not None and self.cache is not None:
            hit = self.cache.get(ckey)
            if hit is not None:
                await self._serve_hit(scope, send, endpoint, rid, user, hit, key_id, t0)
                return
        await self.app(scope, _replay(raw, receive), self._wrap_send(send, rid, ckey))
        self.users.pop(rid, None)  # settled already, or never admitted

    async def _cache_key(self, endpoint: str, body: dict[str, Any] | None,
                         headers: dict[bytes, bytes]) -> tuple[str | None, str | None]:
        """(cache key, verified API key id); (None, None) when the request is not served from the cache."""
        if self.cache is None or body is None or body.get("stream"):
            return None, None
        scope_id = None
        if self.ctx.keys is not None:  # a hit must pass the same key checks as a miss
            auth = headers.get(b"authorization", b"").decode("latin-1")
            secret = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            try:
                key = await asyncio.to_thread(self.ctx.keys.verify, secret)
            except LlmpressError:
                return None, None  # the route answers the auth error
            if SCOPE[endpoint] not in key.scopes and "admin" not in key.scopes:
                return None, None
            scope_id = key.id
        return self.cache.key(self.artifact_id, endpoint, body, scope_id), scope_id

    async def _serve_hit(self, scope: dict[str, Any], send: Any, endpoint: str, rid: str, user: str | None,
                         hit: bytes, key_id: str | None, t0: float) -> None:
        keys, cfg = self.ctx.keys, self.ctx.config
        if keys is not None and key_id is not None:
            await asyncio.to_thread(keys.record_usage, key_id, rid, cfg.model_name, endpoint + ":cache", 0, 0,
                                    (time.perf_counter() - t0) * 1000, 200)
        await asyncio.to_thread(self.hit_recorded, rid, user, hit, t0)
        payload = self._annotate(hit, rid)
        self.ctx.metrics.requests.labels(scope["path"], "200").inc()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), (b"x-request-id", rid.encode()),
                                (b"x-llmpress-cache", b"hit"), *self._tags(rid)]})
        await send({"type": "http.response.body", "body": payload})

    def _wrap_send(self, send: Any, rid: str, ckey: str | None) -> Any:
        """Tag the response; buffer a JSON 200 (to annotate / cache it) or a 429 (to count budget refusals)."""
        state: dict[str, Any] = {"start": None, "chunks": [], "mode": "pass"}

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                json_body = ctype.startswith(b"application/json")
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *self._tags(rid)]}
                if json_body and ((status == 200 and (ckey is not None or self.arm is not None)) or status == 429):
                    state["start"], state["mode"] = message, ("429" if status == 429 else "rewrite")
                    return
                await send(message)
                return
            if message["type"] != "http.response.body" or state["mode"] == "pass":
                await send(message)
                return
            state["chunks"].append(message.get("body", b""))
            if message.get("more_body"):
                return
            payload = b"".join(state["chunks"])
            start = state["start"]
            extra: list[tuple[bytes, bytes]] = []
            if state["mode"] == "429":
                if b"insufficient_quota" in payload:
                    self.budget_rejections.inc()
            else:
                if ckey is not None and self.cache is not None:
                    self.cache.put(ckey, payload)  # stored without this response's id and arm
                    extra = [(b"x-llmpress-cache", b"miss")]
                payload = self._annotate(payload, rid)
            hdrs = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*hdrs, (b"content-length", str(len(payload)).encode()), *extra]})
            await send({"type": "http.response.body", "body": payload})

        return wrapped


async def _read_body(receive: Any) -> tuple[bytes, bool]:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Any) -> Any:
    """The body once, then the client's own messages (so a later disconnect still arrives)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
