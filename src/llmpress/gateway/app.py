"""The gateway's FastAPI app: OpenAI API in front of several upstream targets.

Per request: authenticate the client key (`llmpress keys`), validate the body with the server's
schemas, resolve the route, scan for sensitive data, estimate the worst-case cost and reserve it
against the key's money budget, then try the planned targets in order (retries with backoff, circuit
breakers, spillover on 429/503 or a saturated queue). Non-streaming bodies and streams pass through;
a stream that breaks after its first byte ends with one SSE error event and is not retried elsewhere
(the client has already seen part of an answer). Cost rows are written after the response, off the
latency path; the reservation is settled to the real cost then, also when the client disconnects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from llmpress.errors import (
    AuthError,
    LlmpressError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
)
from llmpress.gateway.config import GatewayConfig, RouteConfig
from llmpress.gateway.pricing import (
    Reservations,
    TokenCounter,
    chat_overhead,
    requested_max_tokens,
    worst_case_nusd,
)
from llmpress.gateway.privacy import PrivacyScanner, request_text
from llmpress.gateway.routing import Breaker, TargetState, plan
from llmpress.gateway.vault import REDACT, KeyResolver, Secret
from llmpress.registry.cost import CostLedger, RequestCostRow, cost_nusd
from llmpress.registry.keys import KeyInfo, KeyStore
from llmpress.server.limits import RateLimiter
from llmpress.server.observe import Observe, freeze_startup_heap
from llmpress.server.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from llmpress.server.streaming import SettlingStream

log = logging.getLogger("llmpress.gateway")

_LAT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_RETRYABLE = {408, 425, 500, 502, 504}
_BUSY = {429, 503}


def error_json(status: int, message: str, etype: str, param: str | None = None, code: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape, OpenAI's; every message passes the redactor first."""
    return JSONResponse({"error": {"message": REDACT(message), "type": etype, "param": param, "code": code}},
                        status_code=status, headers=headers)


def sse_error(message: str, code: str) -> bytes:
    body = {"error": {"message": REDACT(message), "type": "upstream_error", "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()


class GatewayMetrics:
    def __init__(self, states: dict[str, TargetState]) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("llmpress_gateway_requests", "Gateway requests by route, target and status",
                                ["route", "target", "status"], registry=r)
        self.cost = Counter("llmpress_gateway_cost_usd", "USD spent at each target", ["target"], registry=r)
        self.tokens = Counter("llmpress_gateway_tokens", "Tokens through each target", ["target", "kind"], registry=r)
        self.upstream_ttft = Histogram("llmpress_gateway_upstream_ttft_seconds", "Upstream time to first byte",
                                       ["target"], buckets=_LAT, registry=r)
        self.overhead = Histogram("llmpress_gateway_overhead_seconds", "Gateway time before the upstream call",
                                  buckets=_LAT, registry=r)
        self.refused = Counter("llmpress_gateway_refused", "Requests refused before any upstream call", ["reason"],
                               registry=r)
        self.attempts = Counter("llmpress_gateway_upstream_failures", "Failed upstream attempts", ["target", "kind"],
                                registry=r)
        for name, st in states.items():
            g = Gauge(f"llmpress_gateway_target_saturated_{_metric_name(name)}",
                      f"1 when target {name} is saturated", registry=r)
            g.set_function(lambda st=st: 1.0 if st.saturated() else 0.0)
            g = Gauge(f"llmpress_gateway_target_breaker_open_{_metric_name(name)}",
                      f"1 when target {name}'s circuit is open", registry=r)
            g.set_function(lambda st=st: 0.0 if st.breaker.state == "closed" else 1.0)


def _metric_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


@dataclass
class Call:
    """One client request's bookkeeping, from admission to the cost row."""

    request_id: str
    route: str
    key: KeyInfo | None
    stream: bool
    t0: float
    prompt_tokens_est: int
    reserved_nusd: int = 0
    limiter_entry: list[float] | None = None
    target: str | None = None
    model: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    usage_source: str = "upstream"
    ttft_s: float | None = None
    status: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    settled: bool = False


class _Failure(Exception):
    """An upstream attempt that failed before any byte reached the client (safe to try elsewhere)."""

    def __init__(self, target: str, kind: str, message: str, status: int | None = None,
                 body: bytes | None = None) -> None:
        super().__init__(message)
        self.target, self.kind, self.message, self.status, self.body = target, kind, message, status, body


class CostWriter:
    """Group commit of cost rows: rows settled while a write runs go together in the next one.

    One SQLite transaction per request cost the gateway ~40 % of its CPU at 32 streams (py-spy); under load
    the rows of many requests now share one. `write` returns once its row is committed, so a budget
    reservation is released only after the spend it stood for is on record. A batch that fails is retried
    row by row, so one bad row loses nothing else.
    """

    def __init__(self, ledger: CostLedger) -> None:
        self.ledger = ledger
        self._pending: list[tuple[RequestCostRow, asyncio.Future[None]]] = []
        self._writing = False

    async def write(self, row: RequestCostRow) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, fut))
        if not self._writing:
            self._writing = True
            task = asyncio.get_running_loop().create_task(self._drain())  # not cancelled with this request
            _PENDING.add(task)
            task.add_done_callback(_PENDING.discard)
        await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(self.ledger.record_many, [r for r, _ in batch])
                    results: list[BaseException | None] = [None] * len(batch)
                except Exception:  # noqa: BLE001 - find the row that fails; the others still count
                    results = [await asyncio.to_thread(_try_record, self.ledger, r) for r, _ in batch]
                for (_, fut), err in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(None) if err is None else fut.set_exception(err)
        finally:
            self._writing = False


def _try_record(ledger: CostLedger, row: RequestCostRow) -> BaseException | None:
    try:
        ledger.record(row)
        return None
    except Exception as e:  # noqa: BLE001 - handed to that request's settle, which logs it
        return e


class Gateway:
    """Targets, their state and clients, and the request pipeline (one instance per app)."""

    def __init__(self, config: GatewayConfig, auth: bool = True) -> None:
        self.config = config
        self.states = {t.name: TargetState(t, Breaker(config.breaker)) for t in config.targets}
        self.routes = {r.alias: r for r in config.routes}
        # A target's own model names work as implicit routes (local-first over every target serving it).
        for t in config.targets:
            for m in t.models:
                if m not in self.routes:
                    self.routes[m] = RouteConfig(alias=m, targets=[x.name for x in config.targets if m in x.models])
        self.scanner = PrivacyScanner(config.privacy.detectors, config.privacy.patterns, config.privacy.enabled)
        self.counters = {t.name: TokenCounter(t.tokenizer) for t in config.targets}
        self.resolver = KeyResolver()
        self.keys = KeyStore() if auth else None
        self.ledger = CostLedger()
        self.cost_writer = CostWriter(self.ledger)
        self.limiter = RateLimiter()
        self.reservations = Reservations()
        self.metrics = GatewayMetrics(self.states)
        self.clients: dict[str, aiohttp.ClientSession] = {}
        self._poller: asyncio.Task[None] | None = None
        self.created = int(time.time())

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        # aiohttp, not httpx, upstream: side by side at 32 relayed streams (benchmarks/gateway.py, same load
        # generator) the added TTFT p99 was 145 ms through httpx and 14 ms through aiohttp.
        for t in self.config.targets:
            # like httpx.Timeout(t, connect=5): `timeout_s` bounds the connect, the wait for the response
            # head and every wait for the next chunk, not the whole (possibly long) stream
            timeout = aiohttp.ClientTimeout(total=None, connect=min(5.0, t.timeout_s), sock_read=t.timeout_s)
            conn = aiohttp.TCPConnector(limit=512, keepalive_timeout=30)
            self.clients[t.name] = aiohttp.ClientSession(timeout=timeout, connector=conn, auto_decompress=False,
                                                         skip_auto_headers=("User-Agent",))
        self._metrics_client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        if any(t.watches_capacity for t in self.config.targets):
            self._poller = asyncio.create_task(self._poll_capacity())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for c in self.clients.values():
            await c.close()
        await self._metrics_client.close()

    async def _poll_capacity(self) -> None:
        """Read each capacity-watched target's /metrics every `metrics_interval_s`."""
        watched = [s for s in self.states.values() if s.config.watches_capacity]
        while True:
            for st in watched:
                try:
                    async with self._metrics_client.get(st.config.metrics_endpoint) as r:
                        r.raise_for_status()
                        st.update_from_metrics(await r.text())
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    st.poll_error = f"{type(e).__name__}"
            await asyncio.sleep(self.config.metrics_interval_s)

    # -- admission -------------------------------------------------------------------------
    async def authenticate(self, request: Request, scope: str) -> KeyInfo | None:
        if self.keys is None:
            return None
        header = request.headers.get("authorization", "")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else None
        key = await asyncio.to_thread(self.keys.verify, secret)
        request.state.key_id = key.id
        if scope not in key.scopes and "admin" not in key.scopes:
            raise PermissionDeniedError(f"API key {key.id} lacks the {scope!r} scope",
                                        f"create a key with --scopes {scope}")
        return key

    def route_for(self, model: str) -> RouteConfig:
        route = self.routes.get(model)
        if route is None:
            raise NotFoundError(f"model {model!r} is not routed by this gateway",
                                f"use one of {', '.join(sorted(self.routes))} (GET /v1/models)", param="model")
        return route

    async def handle(self, request: Request, endpoint: str) -> Response:
        t0 = time.perf_counter()
        rid = request.state.request_id
        key = await self.authenticate(request, "chat" if endpoint == "chat/completions" else "completions")
        try:
            body = json.loads(await request.body())
        except ClientDisconnect:  # gone before its body arrived: nothing was routed, nothing to answer
            return Response(status_code=499)
        except ValueError as e:
            return error_json(400, f"malformed JSON body: {e}", "invalid_request_error", code="json_invalid")
        if not isinstance(body, dict):
            return error_json(400, "the request body must be a JSON object", "invalid_request_error",
                              code="json_invalid")
        schema = ChatCompletionRequest if endpoint == "chat/completions" else CompletionRequest
        try:
            schema.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(x) for x in first.get("loc", ())) or None
            return error_json(422, f"{param}: {first.get('msg')}" if param else str(first.get("msg")),
                              "invalid_request_error", param, first.get("type"))
        route = self.route_for(body["model"])
        text = request_text(body)
        sensitive = self.scanner.scan(text)
        prompt_est = max(self.counters[n].count(text) for n in route.targets) + chat_overhead(body)
        max_tokens = requested_max_tokens(body)
        need = prompt_est + (max_tokens if max_tokens is not None else 1)
        try:
            p = plan(route, self.states, sensitive, need)
        except LlmpressError as e:
            self.metrics.refused.labels("privacy" if sensitive else "routing").inc()
            if sensitive:
                log.warning("sensitive request refused", extra={"request_id": rid, "error": ",".join(sensitive)})
            raise e
        stream = bool(body.get("stream"))
        n = body.get("n") if isinstance(body.get("n"), int) and body.get("n", 1) > 1 else 1
        choices = n * (len(body["prompt"]) if isinstance(body.get("prompt"), list)
                       and body["prompt"] and isinstance(body["prompt"][0], str | list) else 1)
        call = Call(rid, route.alias, key, stream, t0, prompt_est, detail={"sensitive": sensitive} if sensitive else {})
        if key is not None:
            worst_out = {t.name: max_tokens if max_tokens is not None else max(t.config.context - prompt_est, 1)
                         for t in p.targets}
            need_nusd = max(worst_case_nusd(t.config, prompt_est, choices * worst_out[t.name]) for t in p.targets)
            budget = await asyncio.to_thread(self.ledger.budget, key.id)
            call.reserved_nusd = self.reservations.admit(key.id, budget.budget_nusd, budget.spent_nusd, need_nusd)
            try:
                call.limiter_entry = self.limiter.admit(key, prompt_est + choices * max(worst_out.values()))
            except RateLimitError:
                self.reservations.release(key.id, call.reserved_nusd)
                raise
        self.metrics.overhead.observe(time.perf_counter() - t0)
        try:
            return await self.dispatch(call, p.targets, body, endpoint)
        except BaseException:
            if not call.settled:
                call.status = call.status or 502
                await self.settle(call)
            raise

    # -- upstream --------------------------------------------------------------------------
    async def _keys_for(self, st: TargetState) -> list[Secret | None]:
        keys = self.resolver.cached(st.name, st.config.api_key)
        if keys is None:
            keys = await asyncio.to_thread(self.resolver.resolve, st.name, st.config.api_key)
        return list(keys) or [None]

    async def dispatch(self, call: Call, targets: list[TargetState], body: dict[str, Any],
                       endpoint: str) -> Response:
        failures: list[_Failure] = []
        passes = 1 + max(t.config.retries for t in targets)
        for attempt in range(passes):
            if attempt:
                await asyncio.sleep(self.config.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            for st in targets:
                if attempt > st.config.retries or not st.breaker.allow():
                    continue
                try:
                    keys = await self._keys_for(st)
                except AuthError as e:
                    failures.append(_Failure(st.name, "key", e.one_line()))
                    continue
                for i, secret in enumerate(keys):
                    try:
                        return await self._attempt(call, st, body, endpoint, secret)
                    except _Failure as f:
                        if f.status == 401 and i + 1 < len(keys):
                            continue  # rotated key not (yet) accepted: the previous one is still in its grace period
                        failures.append(f)
                        self.metrics.attempts.labels(st.name, f.kind).inc()
                        if f.status is not None and 400 <= f.status < 500 and f.status not in _BUSY | _RETRYABLE:
                            # the upstream says the request itself is wrong: its answer is the answer
                            return self._client_error(call, f)
                        break
        return self._all_failed(call, failures)

    def _headers(self, secret: Secret | None, call: Call) -> dict[str, str]:
        h = {"content-type": "application/json", "x-request-id": call.request_id}
        if secret is not None:
            h["authorization"] = f"Bearer {secret.reveal()}"
        return h

    async def _attempt(self, call: Call, st: TargetState, body: dict[str, Any], endpoint: str,
                       secret: Secret | None) -> Response:
        cfg = st.config
        model = cfg.models[0] if body["model"] not in cfg.models else body["model"]
        up = dict(body, model=model)
        if call.stream:
            up["stream_options"] = {"include_usage": True}
        url = f"{cfg.base_url}/{endpoint}"
        client = self.clients[cfg.name]
        st.inflight += 1
        st.queue += 1  # until the next /metrics poll says otherwise (a burst would otherwise all land here)
        t_send = time.perf_counter()
        try:
            # returns once the response head is in; the body is read (or relayed) below
            resp = await client.post(url, data=json.dumps(up).encode(), headers=self._headers(secret, call))
        except TimeoutError as e:  # aiohttp's connect / read timeouts are TimeoutErrors
            st.inflight -= 1
            st.breaker.failure()
            raise _Failure(cfg.name, "timeout", f"{cfg.name}: timed out ({type(e).__name__})") from None
        except aiohttp.ClientError as e:
            st.inflight -= 1
            st.breaker.failure()
            raise _Failure(cfg.name, "connect", f"{cfg.name}: {type(e).__name__}: {e}") from None
        except BaseException:  # cancelled (the client went away) while waiting for the head
            st.inflight -= 1
            raise
        if resp.status != 200:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            finally:
                resp.release()
                st.inflight -= 1
            status = resp.status
            if status in _BUSY:
                st.saturated_until = time.monotonic() + 1.0
                kind = "busy"
            else:
                kind = "http"
                if status >= 500:
                    st.breaker.failure()  # a 401 is a key problem, not the target's health
            msg = _upstream_message(raw) or str(resp.reason or "")
            raise _Failure(cfg.name, kind, f"{cfg.name}: HTTP {status}: {msg}", status, raw)
        call.target, call.model = cfg.name, model
        headers = {"x-llmpress-target": cfg.name, "x-llmpress-route": call.route, "x-request-id": call.request_id,
                   # the gateway's own time from arrival to the upstream send (what it adds to TTFT)
                   "x-llmpress-overhead-ms": f"{(t_send - call.t0) * 1000:.3f}"}
        if call.stream:
            started: list[bool] = []

            def close_unstarted() -> None:
                # The client left before the relay ran (Starlette cancels a response whose client is gone
                # before it iterates the body): the relay's own `finally` never runs, so do its part here.
                if not started:
                    st.inflight -= 1
                    resp.close()
                    call.status = 499
                    self._settle_soon(call, [])

            return SettlingStream(self._relay(call, st, resp, t_send, body, started), on_close=close_unstarted,
                                  headers=headers)
        try:
            raw = await resp.read()
            data = json.loads(raw)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            st.breaker.failure()
            raise _Failure(cfg.name, "read", f"{cfg.name}: broken response ({type(e).__name__})") from None
        finally:
            resp.release()
            st.inflight -= 1
        st.breaker.success()
        st.served += 1
        call.ttft_s = time.perf_counter() - t_send
        st.observe_ttft(call.ttft_s)
        self.metrics.upstream_ttft.labels(cfg.name).observe(call.ttft_s)
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            call.tokens_in, call.tokens_out = usage["prompt_tokens"], int(usage.get("completion_tokens") or 0)
        else:
            call.tokens_in = call.prompt_tokens_est
            call.tokens_out = self.counters[cfg.name].count(_choices_text(data))
            call.usage_source = "estimated"
        call.status = 200
        c = cost_nusd(call.tokens_in, call.tokens_out, cfg.price.input_per_mtok, cfg.price.output_per_mtok)
        headers["x-llmpress-cost-usd"] = f"{c / 1e9:.9f}"
        return Response(raw, media_type="application/json", headers=headers,
                        background=BackgroundTask(self.settle, call))

    async def _relay(self, call: Call, st: TargetState, resp: aiohttp.ClientResponse, t_send: float,
                     body: dict[str, Any], started: list[bool]) -> AsyncIterator[bytes]:
        """Pass SSE events through; read usage from the final usage chunk (or count the text); a break
        mid-stream becomes one SSE error event. Always settles, also when the client goes away."""
        started.append(True)
        cfg = st.config
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        pieces: list[bytes] = []
        buf = b""
        first = True
        done = False
        usage: dict[str, Any] | None = None
        call.status = 200
        try:
            async for chunk in resp.content.iter_any():
                if first:
                    call.ttft_s = time.perf_counter() - t_send
                    st.observe_ttft(call.ttft_s)
                    self.metrics.upstream_ttft.labels(cfg.name).observe(call.ttft_s)
                    first = False
                buf += chunk
                out = b""
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    keep = True
                    # hot path: byte checks only; JSON is parsed for the rare usage / error events, and the
                    # text events are parsed after the stream, only when no usage chunk arrived
                    if b'"usage"' in event and event.startswith(b"data: {"):
                        try:
                            obj = json.loads(event[6:])
                        except ValueError:
                            obj = None
                        if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                            usage = obj["usage"]
                            keep = want_usage or bool(obj.get("choices"))
                    elif event.startswith(b'data: {"error"'):
                        call.status = 502
                        call.detail["upstream_error"] = True
                    if usage is None and event.startswith(b"data: {"):
                        pieces.append(event)
                    if keep:
                        out += event + b"\n\n"
                if out:
                    yield out
            done = True
            if buf.strip():
                yield buf
            st.breaker.success()
            st.served += 1
        except (aiohttp.ClientError, TimeoutError) as e:
            # Mid-stream failure: the client has part of an answer, so no silent retry elsewhere.
            st.breaker.failure()
            call.status = 502
            call.detail["stream_error"] = type(e).__name__
            self.metrics.attempts.labels(cfg.name, "stream").inc()
            log.warning("upstream stream broke", extra={"request_id": call.request_id, "error": type(e).__name__})
            yield sse_error(f"target {cfg.name} failed mid-stream ({type(e).__name__}); the partial answer above "
                            "is incomplete and was not retried elsewhere", "upstream_stream_failed")
        except (asyncio.CancelledError, GeneratorExit):
            call.status = 499  # client disconnected: the upstream sees the close and aborts
            raise
        finally:
            st.inflight -= 1
            # a finished stream returns its connection to the pool; one cut short (the client went away, the
            # upstream broke) drops it, so the upstream sees the close and aborts generation
            if done:
                resp.release()
            else:
                resp.close()
            events: list[bytes] | None = pieces
            if usage is not None and isinstance(usage.get("prompt_tokens"), int):
                call.tokens_in, call.tokens_out = usage["prompt_tokens"], int(usage.get("completion_tokens") or 0)
                events = None
            self._settle_soon(call, events)

    def _settle_soon(self, call: Call, events: list[bytes] | None) -> None:
        """Settle off the stream's task (it may be cancelled); keep a reference until done."""
        task = asyncio.get_running_loop().create_task(self.settle(call, events))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    def _client_error(self, call: Call, f: _Failure) -> Response:
        """The upstream refused the request itself (400, 401, 404...): pass its error on, redacted."""
        call.status, call.target = f.status or 400, f.target
        resp = None
        try:
            data = json.loads(f.body or b"")
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                err = data["error"]
                resp = error_json(call.status, f"{f.target}: {err.get('message', '')}",
                                  str(err.get("type", "invalid_request_error")), err.get("param"), err.get("code"),
                                  {"x-llmpress-target": f.target})
        except ValueError:
            pass
        if resp is None:
            resp = error_json(call.status, f.message, "invalid_request_error", headers={"x-llmpress-target": f.target})
        call.target = None  # nothing was served: no cost
        resp.background = BackgroundTask(self.settle, call)
        return resp

    def _all_failed(self, call: Call, failures: list[_Failure]) -> Response:
        busy = failures and all(f.kind == "busy" for f in failures)
        call.status = 503 if busy else 502
        what = "; ".join(f.message for f in failures) or "no target could be tried (circuits open)"
        log.warning("all targets failed", extra={"request_id": call.request_id, "error": REDACT(what)})
        resp = error_json(call.status, f"route {call.route!r}: every target failed: {what}",
                          "overloaded_error" if busy else "upstream_error", code="all_targets_failed",
                          headers={"Retry-After": "1"} if busy else None)
        resp.background = BackgroundTask(self.settle, call)
        return resp

    async def settle(self, call: Call, stream_events: list[bytes] | None = None) -> None:
        """Write the cost row (and charge the budget), then release the reservation; idempotent.
        A stream without a usage chunk is counted from its events' text (the target's tokenizer or chars/4)."""
        if call.settled:
            return
        call.settled = True
        st = self.states.get(call.target or "")
        if stream_events is not None and st is not None:
            call.tokens_in = call.prompt_tokens_est
            call.tokens_out = await asyncio.to_thread(self.counters[st.name].count, _events_text(stream_events))
            call.usage_source = "estimated"
        price = st.config.price if st else None
        c = cost_nusd(call.tokens_in, call.tokens_out, price.input_per_mtok, price.output_per_mtok) if price else 0
        latency_ms = (time.perf_counter() - call.t0) * 1000
        row = RequestCostRow(request_id=call.request_id, key_id=call.key.id if call.key else None, route=call.route,
                             target=call.target, model=call.model or call.route, tokens_in=call.tokens_in,
                             tokens_out=call.tokens_out, usage_source=call.usage_source, cost_nusd=c,
                             latency_ms=latency_ms, ttft_ms=None if call.ttft_s is None else call.ttft_s * 1000,
                             status=call.status, stream=int(call.stream), detail=call.detail)
        try:
            await self.cost_writer.write(row)
            if self.keys is not None and call.key is not None:
                await asyncio.to_thread(self.keys.record_usage, call.key.id, call.request_id, row.model,
                                        f"gateway:{call.route}", call.tokens_in, call.tokens_out, latency_ms,
                                        call.status)
        except Exception:  # noqa: BLE001 - a failed write must not take the gateway down; it is logged
            log.exception("could not record cost", extra={"request_id": call.request_id})
        finally:
            if call.key is not None:
                self.reservations.release(call.key.id, call.reserved_nusd)
                if call.limiter_entry is not None:
                    self.limiter.settle(call.limiter_entry, call.tokens_in + call.tokens_out)
        self.metrics.requests.labels(call.route, call.target or "-", str(call.status)).inc()
        if call.target:
            self.metrics.cost.labels(call.target).inc(c / 1e9)
            self.metrics.tokens.labels(call.target, "in").inc(call.tokens_in)
            self.metrics.tokens.labels(call.target, "out").inc(call.tokens_out)


_PENDING: set[asyncio.Task[None]] = set()


def _upstream_message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return str(data["error"].get("message", ""))[:300]
    except ValueError:
        pass
    return raw[:200].decode(errors="replace")


def _events_text(events: list[bytes]) -> str:
    """The generated text of streamed chat / completion chunks."""
    out = []
    for ev in events:
        try:
            obj = json.loads(ev[6:])
        except ValueError:
            continue
        for ch in obj.get("choices") or [] if isinstance(obj, dict) else []:
            piece = (ch.get("delta") or {}).get("content") if "delta" in ch else ch.get("text")
            if piece:
                out.append(piece)
    return "".join(out)


def _choices_text(data: Any) -> str:
    out = []
    for ch in (data.get("choices") or []) if isinstance(data, dict) else []:
        msg = ch.get("message") or {}
        out.append(str(msg.get("content") or ch.get("text") or ""))
    return "".join(out)


def create_gateway_app(config: GatewayConfig, auth: bool = True) -> FastAPI:
    """Build the gateway app; upstream clients and the capacity poller live with its lifespan."""
    gw = Gateway(config, auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        frozen = freeze_startup_heap()
        log.info("gateway started; %d start-up objects frozen out of GC scans", frozen,
                 extra={"model": ",".join(sorted(gw.routes))})
        try:
            yield
        finally:
            while _PENDING:
                await asyncio.sleep(0.01)
            await gw.stop()

    app = FastAPI(title="llmpress gateway", version="0.1", lifespan=lifespan)
    app.state.gateway = gw

    @app.exception_handler(LlmpressError)
    async def _llmpress_error(request: Request, e: LlmpressError) -> JSONResponse:
        headers = None
        if isinstance(e, RateLimitError):
            headers = {"Retry-After": str(max(1, int(e.retry_after + 0.999)))}
        elif isinstance(e, OverloadedError):
            headers = {"Retry-After": "2"}
        code = "insufficient_quota" if e.error_type == "insufficient_quota" or (
            isinstance(e, RateLimitError) and "budget" in e.message) else None
        return error_json(e.http_status, e.one_line(), e.error_type, e.param, code, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        etype = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_json(e.status_code, str(e.detail), etype)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": getattr(request.state, "request_id", None)})
        return error_json(500, f"internal error: {e.__class__.__name__}", "server_error")

    app.add_middleware(Observe, logger=log)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "targets": {n: {"breaker": s.breaker.state, "saturated": s.saturated(),
                                                "queue": s.queue, "kv_usage": round(s.kv_usage, 3),
                                                "inflight": s.inflight, "served": s.served}
                                            for n, s in gw.states.items()}}

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        await gw.authenticate(request, "models")
        return ModelList(data=[ModelCard(id=a, created=gw.created, owned_by="llmpress-gateway", root=a)
                               for a in sorted(gw.routes)])

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await gw.handle(request, "chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await gw.handle(request, "completions")

    return app
