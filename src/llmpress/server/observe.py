"""Request id, in-flight count, a per-request metric and one JSON log line: the plain ASGI middleware of
`llmpress serve` and `llmpress gateway`.

Plain ASGI, not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware hides the client's
`http.disconnect` from the endpoint (a non-streaming request never noticed a hang-up), and it runs every
response through a memory stream and an extra task, a cost the gateway would pay on each relayed event.
"""

from __future__ import annotations

import gc
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmpress.server.errors import error_json


def freeze_startup_heap() -> int:
    """Take every object alive once a server has started (modules, model, app) out of the collector's scans.

    torch + transformers + FastAPI leave ~470k tracked objects; a full collection walked them all with every
    thread stopped, ~240 ms on this project's 2-core machine, and the gateway benchmark showed it as a ~300 ms
    TTFT tail at 32 streams. Objects that requests allocate later are still collected as before. Returns the
    number of objects frozen. Called again (a hot swap retired a model), it first unfreezes, so what is garbage
    by then, the retired model's reference cycles included, is collected before the rest is frozen again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
QUIET_PATHS = frozenset({"/metrics", "/health", "/ready"})


class Observe:
    """The client's `x-request-id` if valid (400 if not, since it is echoed and forwarded), else a new one;
    `tracker.inflight` counts requests in flight; `count(path, status)` and the log line skip probes."""

    def __init__(self, app: ASGIApp, *, logger: logging.Logger, tracker: Any = None,
                 count: Callable[[str, int], None] | None = None) -> None:
        self.app = app
        self.log = logger
        self.tracker = tracker
        self.count = count

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

        if self.tracker is not None:
            self.tracker.inflight += 1
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.tracker is not None:
                self.tracker.inflight -= 1
            path = scope["path"]
            if path not in QUIET_PATHS:
                if self.count is not None:
                    self.count(path, status["code"])
                self.log.info("request", extra={"request_id": rid, "method": scope["method"], "path": path,
                                                "status": status["code"],
                                                "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
                                                "key_id": scope["state"].get("key_id")})
