"""Several models in one server process, each following its alias with a hot swap.

`MultiModelApp` is a small ASGI front over one app per model (each built by `build_app`, so every model
keeps the single-model server's routes, auth, accounting and metrics). A generation request goes to
the model its JSON `model` field names (slot name such as `prod`, artifact id or artifact name);
`GET /v1/models` lists them all; `/metrics` merges every model's series under a `model` label.

Hot swap: a watcher polls each slot's alias. When it points at a new artifact, the new model is
loaded off the event loop, its app started, and the slot switched in one step of the event loop:
requests dispatched from then on go to the new model, requests already dispatched (streams
included) finish on the old one, which is shut down and dropped once its last response is sent.
Nothing is refused or cut during the swap.

With an A/B test (`ab_test`) whose arms are slots here, a request naming the test (or its alias) is
given an arm (sticky per `user`) and sent to that arm's slot; the arm's app records it (`ops/serving.py`).
When the alias is itself an arm (`--arms prod=90,canary=10`), every request for `prod` is assigned;
an artifact id reaches one model directly.

Each model has its own engine thread (`engine_loop="background"`): a process serving one model keeps
the single engine loop on the main thread (`llmpress serve MODEL`), this front is for several.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmpress.errors import ConfigError
from llmpress.server.observe import freeze_startup_heap

log = logging.getLogger("llmpress.server")

Builder = Callable[[str], tuple[Any, Any]]  # spec -> (app, artifact)


@dataclass
class _Served:
    """One loaded model: its app, artifact, lifespan and how many responses are still being sent."""

    app: Any
    artifact: Any
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    active: int = 0


@dataclass
class Slot:
    name: str  # what the user asked for: an alias follows its changes, anything else stays put
    current: _Served
    follows: bool = False
    retired: list[_Served] = field(default_factory=list)
    swaps: int = 0
    failed: str | None = None  # an artifact the alias pointed at that could not be loaded

    def names(self) -> set[str]:
        a = self.current.artifact
        return {self.name, a.id, a.name}


class MultiModelApp:
    """The ASGI app `llmpress serve --model A --model B` runs."""

    def __init__(self, specs: list[str], build: Builder, follow: bool = True, poll_s: float = 2.0,
                 ab_test: str | None = None) -> None:
        from llmpress.ops.deployments import alias_target

        if not specs or len(set(specs)) != len(specs):
            raise ConfigError(f"serve needs distinct models, got {specs}", "pass --model NAME once per model",
                              param="model")
        self.build = build
        self.poll_s = poll_s
        self.slots: list[Slot] = []
        for spec in specs:
            app, art = build(spec)
            self.slots.append(Slot(spec, _Served(app, art), follows=follow and alias_target(spec) is not None))
        self.ab = None
        if ab_test:
            from llmpress.ops.ab import load

            self.ab = load(ab_test)
            missing = [a.name for a in self.ab.arms if self.slot(a.name) is None]
            if missing:
                raise ConfigError(f"A/B test {ab_test!r} has arms not served here: {', '.join(missing)}",
                                  "serve every arm: --model " + " --model ".join(a.name for a in self.ab.arms))
        self._watcher: asyncio.Task[None] | None = None
        self.started_at = int(time.time())

    def slot(self, name: str) -> Slot | None:
        """The slot a request's `model` names: a slot name first, then an artifact id or name."""
        exact = [s for s in self.slots if s.name == name]
        if exact:
            return exact[0]
        return next((s for s in self.slots if name in s.names()), None)

    # -- ASGI -----------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            await self._models(scope, receive, send)
            return
        if method == "GET" and path == "/metrics":
            await self._metrics(send)
            return
        if method == "GET" and path in ("/health", "/ready"):
            await self._health(scope, receive, send, path)
            return
        slot = self.slots[0]
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions", "/generate"):
            body = await _read_body(receive)
            slot, body = self._route(body, slot)
            scope = _with_body_length(scope, len(body))
            receive = _replay(body, receive)
        served = slot.current  # bound now: this request finishes here whatever the slot does next
        served.active += 1
        try:
            await served.app(scope, receive, send)
        finally:
            served.active -= 1

    def _route(self, body: bytes, default: Slot) -> tuple[Slot, bytes]:
        try:
            doc = json.loads(body)
        except ValueError:
            return default, body
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
            return default, body
        name = doc["model"]
        if self.ab is not None and name in {self.ab.alias, self.ab.name} and self.ab.status == "running":
            arm = self.ab.assign(str(doc["user"]) if doc.get("user") is not None else None)
            doc["model"] = arm.name
            return self.slot(arm.name) or default, json.dumps(doc).encode()
        return self.slot(name) or default, body

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    for s in self.slots:
                        await _start(s.current)
                    if any(s.follows for s in self.slots) or self.ab is not None:
                        self._watcher = asyncio.create_task(self._watch())
                except Exception as e:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self._watcher is not None:
                    self._watcher.cancel()
                for s in self.slots:
                    for old in [s.current, *s.retired]:
                        await old.stack.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- hot swap -------------------------------------------------------------------------------
    async def _watch(self) -> None:
        from llmpress.ops.ab import load
        from llmpress.ops.deployments import alias_target

        while True:
            await asyncio.sleep(self.poll_s)
            if self.ab is not None and self.ab.status == "running":
                try:  # `ab stop` ends the routing here too
                    self.ab = await asyncio.to_thread(load, self.ab.name)
                except Exception:
                    log.exception("could not refresh the A/B test", extra={"ab_test": self.ab.name})
            for s in self.slots:
                if not s.follows:
                    continue
                target = None
                try:
                    target = await asyncio.to_thread(alias_target, s.name)
                    if target == s.current.artifact.id:
                        s.failed = None  # the alias came back: a later move to that artifact is tried again
                    elif target and target != s.failed:
                        await self.swap(s)
                except Exception:  # a bad new artifact must not take the serving one down
                    s.failed = target  # not retried until the alias moves again
                    log.exception("hot swap failed; still serving the previous artifact",
                                  extra={"model": s.name, "artifact": target})
            await self._reap()

    async def swap(self, s: Slot) -> None:
        """Load the alias's new artifact, start it, switch the slot to it, retire the old one."""
        t0 = time.perf_counter()
        app, art = await asyncio.to_thread(self.build, s.name)
        new = _Served(app, art)
        await _start(new)
        old, s.current = s.current, new  # one event-loop step: no request sees a half-switched slot
        s.retired.append(old)
        s.swaps += 1
        log.info("hot swap", extra={"model": s.name, "from": old.artifact.id, "to": art.id,
                                    "load_s": round(time.perf_counter() - t0, 2)})
        await self._reap()

    async def _reap(self) -> None:
        """Shut down retired models whose last response has been sent."""
        reaped = 0
        for s in self.slots:
            for old in list(s.retired):
                if old.active == 0 and not old.app.state.engine.has_work():
                    s.retired.remove(old)
                    await old.stack.aclose()
                    reaped += 1
        if reaped:
            old = None  # noqa: F841 - the loop variable still held the last retired model
            freeze_startup_heap()  # its objects were frozen at its start: collect its cycles, refreeze the rest

    # -- merged endpoints -----------------------------------------------------------------------
    async def _models(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        ctx = self.slots[0].current.app.state.context
        if ctx.keys is not None:
            from llmpress.errors import LlmpressError, PermissionDeniedError

            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode()
            secret = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            try:
                key = await asyncio.to_thread(ctx.keys.verify, secret)
                if "models" not in key.scopes and "admin" not in key.scopes:
                    raise PermissionDeniedError(f"API key {key.id} lacks the 'models' scope",
                                                "create a key with --scopes models")
            except LlmpressError as e:
                from llmpress.server.errors import llmpress_error_response

                await llmpress_error_response(e)(scope, receive, send)
                return
        data = [{"id": s.name, "object": "model", "created": self.started_at, "owned_by": "llmpress",
                 "root": s.current.artifact.id, "parent": s.current.artifact.manifest.parent} for s in self.slots]
        await _send_json(send, 200, {"object": "list", "data": data})

    async def _metrics(self, send: Any) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from prometheus_client.registry import CollectorRegistry

        merged = CollectorRegistry()
        merged.register(_Labelled([(s.name, s.current.app.state.metrics.registry) for s in self.slots]))
        body = generate_latest(merged)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _health(self, scope: dict[str, Any], receive: Any, send: Any, path: str) -> None:
        """Ready / healthy only when every model is (the first failing model's answer otherwise)."""
        for s in self.slots:
            status, body = await _call(s.current.app, scope, receive)
            if status != 200:
                await _send_json(send, status, json.loads(body))
                return
        await _send_json(send, 200, {"status": "ok" if path == "/health" else "ready",
                                     "models": [s.name for s in self.slots]})


class _Labelled:
    """A collector that re-exports several registries' samples with a `model` label added."""

    def __init__(self, sources: list[tuple[str, Any]]) -> None:
        self.sources = sources

    def collect(self) -> Any:
        from prometheus_client.metrics_core import Metric

        families: dict[str, Metric] = {}
        for model, registry in self.sources:
            for fam in registry.collect():
                out = families.get(fam.name)
                if out is None:
                    out = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for smp in fam.samples:
                    out.add_sample(smp.name, {**smp.labels, "model": model}, smp.value, smp.timestamp, smp.exemplar)
        return list(families.values())


async def _start(served: _Served) -> None:
    await served.stack.enter_async_context(served.app.router.lifespan_context(served.app))


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then the client's real messages (disconnect)

    return replay


def _with_body_length(scope: dict[str, Any], n: int) -> dict[str, Any]:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(n).encode())]}


async def _send_json(send: Any, status: int, doc: Any) -> None:
    body = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _call(app: Any, scope: dict[str, Any], receive: Any) -> tuple[int, bytes]:
    """Run a GET on a sub-app and capture its answer."""
    status, chunks = 500, []

    async def capture(msg: dict[str, Any]) -> None:
        nonlocal status
        if msg["type"] == "http.response.start":
            status = msg["status"]
        elif msg["type"] == "http.response.body":
            chunks.append(msg.get("body", b""))

    await app(scope, receive, capture)
    return status, b"".join(chunks)
