"""The llmpress server as Ray Serve replicas: autoscaling on ongoing requests, affinity, failover.

```
client ─HTTP─▶ Serve proxy (127.0.0.1:PORT) ─▶ LlmpressGateway (1, no model) ─handle─▶ LlmpressReplica × N
```

Each `LlmpressReplica` is a whole llmpress server (`llmpress.server.build_app`: same OpenAI API, keys,
rate limits, usage accounting and metrics) whose engine loop runs in a background thread; requests
reach its FastAPI app in-process over ASGI, and the response comes back as a stream of chunks.

The gateway exists for failover, which Ray Serve's HTTP proxy does not do: when a replica dies
before any byte of a response went to the client, the request is sent again to another replica
(non-streaming responses are buffered whole, so they are always retryable); when a stream had
started, the client gets one SSE error event and `[DONE]`. Every wait is bounded: never a hang.

Routing (`AffinityRouter`, a Ray Serve request router): requests carrying a session (`x-session-id`,
else the API key) go to the replica that rendezvous hashing picks for it, so a conversation keeps its
KV prefix cache and a key's in-memory rate-limit window lives in one replica; when that replica is
full or gone, the next in the hash order takes it. Requests without a session: power of two choices.

Metrics: every replica pushes its Prometheus text to a small `MetricsBoard` actor every 2 s; the
gateway's `/metrics` merges them with a `replica` label, plus its own retry/failure counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the route's string annotations here

from llmpress.errors import ConfigError, LlmpressError

try:
    import ray
    from ray import serve
    from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica
except ImportError as e:  # pragma: no cover - the CLI checks first and says how to install
    raise ConfigError("Ray Serve is not installed (needed by --replicas / --ray-address)",
                      "pip install 'llmpress[ray]' (ray[serve])") from e

log = logging.getLogger("llmpress.scale")

APP_NAME = "llmpress"
REPLICA_HEADER = "x-llmpress-replica"
PID_HEADER = "x-llmpress-replica-pid"
ATTEMPTS_HEADER = "x-llmpress-attempts"
SESSION_HEADER = "x-session-id"


@dataclass
class RayServeConfig:
    """How to run `llmpress serve MODEL --replicas N` on Ray Serve."""

    model: str
    replicas: int = 2
    min_replicas: int | None = None  # set min/max to autoscale on ongoing requests
    max_replicas: int | None = None
    target_ongoing_requests: float = 16.0
    ray_address: str | None = None  # None: start a local cluster on 127.0.0.1
    host: str = "127.0.0.1"
    port: int = 8000
    threads_per_replica: int = 1
    num_cpus: int | None = None  # local cluster only; None: threads_per_replica * max replicas
    auth: bool = True
    max_ongoing_requests: int | None = None  # per replica; None: 2 * max_batch
    max_retries: int = 3
    retry_window_s: float = 60.0
    chunk_timeout_s: float = 660.0  # longer than the server's 600 s request timeout
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0
    engine: dict[str, Any] = field(default_factory=dict)  # build_app's engine kwargs (max_batch, kv_cache_mb, ...)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, got {self.replicas}", "pass --replicas 2", param="replicas")
        if self.threads_per_replica < 1:
            raise ConfigError(f"threads per replica must be >= 1, got {self.threads_per_replica}",
                              "pass --threads 1", param="threads")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ConfigError("autoscaling needs both --min-replicas and --max-replicas",
                              "pass both, e.g. --min-replicas 1 --max-replicas 4", param="max_replicas")
        if self.autoscaling:
            assert self.min_replicas is not None and self.max_replicas is not None
            if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
                raise ConfigError(f"need 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1, got "
                                  f"{self.min_replicas}..{self.max_replicas}", "e.g. --min-replicas 1 --max-replicas 4",
                                  param="max_replicas")
            if self.target_ongoing_requests <= 0:
                raise ConfigError(f"--target-ongoing-requests must be > 0, got {self.target_ongoing_requests}",
                                  "e.g. --target-ongoing-requests 16", param="target_ongoing_requests")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None

    @property
    def replica_options(self) -> dict[str, Any]:
        """ray_actor_options: one CPU per torch thread, and OpenMP sized to match, so replicas don't oversubscribe."""
        n = self.threads_per_replica
        env = {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), "TOKENIZERS_PARALLELISM": "false"}
        for var in ("LLMPRESS_HOME", "LLMPRESS_DATABASE_URL", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONPATH"):
            if os.environ.get(var):
                env[var] = os.environ[var]
        return {"num_cpus": n, "runtime_env": {"env_vars": env}}


# -- routing --------------------------------------------------------------------------------
def _rank(key: str, replicas: list[RunningReplica]) -> list[RunningReplica]:
    """Rendezvous (highest-random-weight) order: stable per key, only 1/N of keys move when N changes."""
    return sorted(replicas, key=lambda r: hashlib.sha256(f"{key}|{r.replica_id.unique_id}".encode()).digest(),
                  reverse=True)


class AffinityRouter(RequestRouter):
    """Session/key affinity by rendezvous hashing, falling back down the hash order when a replica is full."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        key = pending_request.kwargs.get("affinity") if pending_request is not None else None
        if not key:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        ranked = _rank(str(key), candidate_replicas)
        return [[ranked[0]], ranked[1:3]] if len(ranked) > 1 else [ranked]


# -- metrics --------------------------------------------------------------------------------
@ray.remote(num_cpus=0)
class MetricsBoard:
    """Latest Prometheus text of every replica (replicas push, the gateway reads)."""

    def __init__(self) -> None:
        self.texts: dict[str, tuple[float, str]] = {}

    def put(self, replica: str, text: str) -> None:
        self.texts[replica] = (time.time(), text)

    def snapshot(self, max_age_s: float = 15.0) -> dict[str, str]:
        now = time.time()
        self.texts = {k: v for k, v in self.texts.items() if now - v[0] <= max_age_s}
        return {k: v[1] for k, v in self.texts.items()}


def merge_metrics(texts: dict[str, str]) -> str:
    """Merge several Prometheus text expositions into one, each sample labelled with its replica.

    Families keep their HELP/TYPE lines once, with the samples of every replica grouped under them
    (the text format requires a family's samples to be contiguous)."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for replica, text in sorted(texts.items()):
        current = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = parts[2]
                    head, _ = families.setdefault(current, ([], []))
                    if line not in head:
                        head.append(line)
                continue
            name, _, rest = line.partition(" ")
            label = f'replica="{replica}"'
            if "{" in name:
                base, _, labels = name.partition("{")
                sample = f"{base}{{{label},{labels} {rest}" if labels != "}" else f"{base}{{{label}}} {rest}"
            else:
                sample = f"{name}{{{label}}} {rest}"
            families.setdefault(current or name, ([], []))[1].append(sample)
    return "".join("\n".join(head + samples) + "\n" for head, samples in families.values())


def keep_grpc_on_loopback() -> None:
    """Make this Serve replica's inter-deployment gRPC server listen on 127.0.0.1 when the node is loopback.

    Ray Serve binds that server to `[::]:0` (all interfaces) right after the user constructor returns;
    on a loopback-only local cluster (see `start_ray`) nothing may listen on other interfaces, and peers
    reach it at the node address, 127.0.0.1. Called from our constructors, so it patches only our replicas."""
    import ipaddress

    from ray.serve._private import replica as serve_replica

    if not ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback:
        return
    original = serve_replica.add_port_to_grpc_server
    if getattr(original, "_llmpress_loopback", False):
        return

    def add_port(server: Any, address: str) -> int:
        return original(server, "127.0.0.1:0" if address == "[::]:0" else address)  # type: ignore[no-any-return]

    add_port._llmpress_loopback = True  # type: ignore[attr-defined]
    serve_replica.add_port_to_grpc_server = add_port


# -- the replica: a whole llmpress server, driven over in-process ASGI ----------------------------
class LlmpressReplica:
    """One llmpress server (engine thread in the background + FastAPI app) inside a Ray Serve replica."""

    async def __init__(self, model: str, auth: bool, host: str, threads: int, engine: dict[str, Any],
                       board: Any = None) -> None:
        import torch

        from llmpress.server import build_app

        keep_grpc_on_loopback()
        torch.set_num_threads(threads)
        self.app, self.art = await asyncio.to_thread(
            lambda: build_app(model, host=host, auth=auth, num_threads=threads, **engine))
        # The app's lifespan starts the engine loop (EngineThread.start(): a background thread here,
        # since the replica's event loop owns this thread) and drains it on shutdown.
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.pid = os.getpid()
        self.board = board
        self._stop = threading.Event()
        if board is not None:  # a plain thread: independent of which event loop ran this constructor
            threading.Thread(target=self._push_metrics, name="llmpress-metrics-push", daemon=True).start()

    def _push_metrics(self) -> None:
        metrics = self.app.state.metrics
        while not self._stop.is_set():
            try:
                ray.get(self.board.put.remote(self.replica_id, metrics.render().decode()), timeout=10)
            except Exception:  # the board going away must not take the replica with it
                log.debug("metrics push failed", exc_info=True)
            self._stop.wait(2.0)

    def info(self) -> dict[str, Any]:
        return {"replica": self.replica_id, "pid": self.pid, "artifact": self.art.id}

    async def forward(self, meta: dict[str, Any], body: bytes, affinity: str | None = None) -> AsyncIterator[Any]:
        """Run one HTTP request through the app; yield {"status", "headers"} first, then body chunks (bytes).

        `affinity` is read by the router only. Cancelling the call (client gone) disconnects the request,
        which aborts its sequences in the engine."""
        disconnected = asyncio.Event()
        out: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await out.put(message)

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": meta["method"], "scheme": "http", "path": meta["path"],
                 "raw_path": meta["path"].encode(), "root_path": "", "query_string": meta.get("query", "").encode(),
                 "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]],
                 "client": tuple(meta.get("client") or ("127.0.0.1", 0)), "server": ("127.0.0.1", 0),
                 "state": {}}
        task = asyncio.get_running_loop().create_task(self.app(scope, receive, send))
        task.add_done_callback(lambda t: out.put_nowait(None))
        try:
            while True:
                msg = await out.get()
                if msg is None:
                    break
                if msg["type"] == "http.response.start":
                    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in msg.get("headers", [])]
                    headers += [(REPLICA_HEADER, self.replica_id), (PID_HEADER, str(self.pid))]
                    yield {"status": msg["status"], "headers": headers}
                elif msg["type"] == "http.response.body":
                    if msg.get("body"):
                        yield bytes(msg["body"])
                    if not msg.get("more_body", False):
                        break
        finally:
            disconnected.set()
            if not task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(task), 5.0)
                except (TimeoutError, asyncio.CancelledError):
                    task.cancel()
                except Exception:  # the app answers its own errors; anything left is logged by it
                    pass

    async def __del__(self) -> None:
        self._stop.set()
        try:
            await self._lifespan.__aexit__(None, None, None)
        except Exception:  # pragma: no cover - shutting down
            log.debug("lifespan exit failed", exc_info=True)


# -- the gateway: retries on another replica when one dies before anything was sent ---------------
def _replica_failures() -> tuple[type[BaseException], ...]:
    from ray import exceptions as rx
    from ray.serve.exceptions import ReplicaUnavailableError

    return (rx.RayActorError, rx.WorkerCrashedError, rx.ObjectLostError, rx.OwnerDiedError, ReplicaUnavailableError)


# recomputed by the proxy (x-request-id: Serve's proxy sets the same id the app echoed)
_DROP_HEADERS = ("content-length", "transfer-encoding", "x-request-id")


def _error_body(status: int, message: str, etype: str, code: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}}).encode()


def build_gateway_app() -> Any:
    """The gateway's FastAPI app: one catch-all route that forwards to the replicas (built on the replica)."""
    from fastapi import FastAPI
    from fastapi.responses import Response, StreamingResponse
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    gw = FastAPI(title="llmpress gateway", docs_url=None, redoc_url=None, openapi_url=None)
    registry = CollectorRegistry()
    retries = Counter("llmpress_gateway_retries", "Requests sent again after a replica failed", registry=registry)
    failed = Counter("llmpress_gateway_replica_failures", "Replica failures seen by the gateway, by phase",
                     ["phase"], registry=registry)
    reporting = Gauge("llmpress_gateway_replicas_reporting", "Replicas that pushed metrics in the last 15 s",
                      registry=registry)

    def state() -> dict[str, Any]:
        return gw.state.llmpress  # type: ignore[no-any-return]

    async def next_chunk(gen: Any, timeout: float) -> Any:
        return await asyncio.wait_for(gen.__anext__(), timeout)

    async def rest(gen: Any, first: bytes | None, event_stream: bool, timeout: float) -> AsyncIterator[bytes]:
        done = False
        try:
            if first:
                yield first
            while True:
                try:
                    chunk = await next_chunk(gen, timeout)
                except StopAsyncIteration:
                    done = True
                    return
                yield chunk
        except _replica_failures() as e:
            failed.labels("streaming").inc()
            done = True
            if event_stream:
                msg = f"the replica serving this stream failed ({e.__class__.__name__}); partial output above"
                err = {"error": {"message": msg, "type": "server_error", "param": None, "code": "replica_failed"}}
                yield f"data: {json.dumps(err)}\n\n".encode()
                yield b"data: [DONE]\n\n"
        except TimeoutError:
            done = True
            if event_stream:
                err = {"error": {"message": f"no output from the replica for {timeout:.0f} s", "type": "timeout_error",
                                 "param": None, "code": "timeout"}}
                yield f"data: {json.dumps(err)}\n\n".encode()
                yield b"data: [DONE]\n\n"
        finally:
            if not done:  # client went away: stop the work on the replica
                gen.cancel()

    async def metrics_text() -> bytes:
        st = state()
        texts: dict[str, str] = {}
        if st["board"] is not None:
            try:
                texts = await asyncio.wait_for(st["board"].snapshot.remote(), 5.0)
            except Exception:
                texts = {}
        reporting.set(len(texts))
        return merge_metrics(texts).encode() + generate_latest(registry)

    async def dispatch(request: Request) -> Response:
        st = state()
        cfg: RayServeConfig = st["config"]
        if request.url.path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            return Response(await metrics_text(), media_type=CONTENT_TYPE_LATEST)
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in ("host", "connection")]
        meta = {"method": request.method, "path": request.url.path, "query": request.url.query, "headers": headers,
                "client": [request.client.host, request.client.port] if request.client else None}
        affinity = session_key(request, body)
        deadline = time.monotonic() + cfg.retry_window_s
        attempt = 0
        while True:
            attempt += 1
            gen = st["replicas"].forward.remote(meta, body, affinity=affinity)
            try:
                start = await next_chunk(gen, cfg.chunk_timeout_s)
                out_headers = {k: v for k, v in start["headers"] if k.lower() not in _DROP_HEADERS}
                out_headers[ATTEMPTS_HEADER] = str(attempt)
                event_stream = out_headers.get("content-type", "").startswith("text/event-stream")
                if not event_stream:  # buffer whole: retryable until the last byte
                    chunks = []
                    while True:
                        try:
                            chunks.append(await next_chunk(gen, cfg.chunk_timeout_s))
                        except StopAsyncIteration:
                            break
                    return Response(b"".join(chunks), status_code=start["status"], headers=out_headers)
                try:  # a stream is committed once its first chunk is on its way to the client
                    first = await next_chunk(gen, cfg.chunk_timeout_s)
                except StopAsyncIteration:
                    first = None
                return StreamingResponse(rest(gen, first, True, cfg.chunk_timeout_s), status_code=start["status"],
                                         headers=out_headers)
            except _replica_failures() as e:
                failed.labels("before_response").inc()
                gen.cancel()
                if attempt > cfg.max_retries or time.monotonic() > deadline:
                    status, payload = _error_body(503, f"no replica could serve the request after {attempt} attempts "
                                                       f"({e.__class__.__name__})", "overloaded_error",
                                                  "replica_failed")
                    return Response(payload, status_code=status, media_type="application/json",
                                    headers={"Retry-After": "2", ATTEMPTS_HEADER: str(attempt)})
                retries.inc()
                log.warning("replica failed before responding; retrying", extra={"attempt": attempt})
                await asyncio.sleep(min(2.0, 0.2 * 2 ** (attempt - 1)))
            except asyncio.CancelledError:  # the client went away: stop the work on the replica too
                gen.cancel()
                raise
            except TimeoutError:
                gen.cancel()
                status, payload = _error_body(504, f"no response from a replica within {cfg.chunk_timeout_s:.0f} s",
                                              "timeout_error", "timeout")
                return Response(payload, status_code=status, media_type="application/json")

    gw.add_api_route("/{path:path}", dispatch, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"],
                     include_in_schema=False)
    return gw


def session_key(request: Any, body: bytes) -> str | None:
    """What ties a request to a replica: x-session-id, else the OpenAI `user` field, else the API key (hashed)."""
    sid = request.headers.get(SESSION_HEADER)
    if not sid and body[:1] == b"{" and b'"user"' in body and len(body) < 1 << 20:
        try:
            user = json.loads(body).get("user")
            sid = f"user:{user}" if isinstance(user, str) and user else None
        except (ValueError, AttributeError):
            sid = None
    if not sid:
        auth = request.headers.get("authorization", "")
        sid = f"key:{auth}" if auth else None
    return hashlib.sha256(sid.encode()).hexdigest()[:16] if sid else None


class LlmpressGateway:
    """Ingress: forwards every request to the replicas through a DeploymentHandle, retrying on failover."""

    def __init__(self, replicas: Any, config: RayServeConfig, board: Any = None) -> None:
        keep_grpc_on_loopback()
        self.replicas = replicas.options(stream=True)
        self.config = config
        self.board = board

    def __serve_build_asgi_app__(self) -> Any:
        app = build_gateway_app()
        app.state.llmpress = {"replicas": self.replicas, "config": self.config, "board": self.board}
        return app


# -- building and running -----------------------------------------------------------------------
def build_application(cfg: RayServeConfig, board: Any = None) -> Any:
    """The Serve application: gateway (ingress) bound to the replica deployment."""
    from ray.serve.config import RequestRouterConfig

    max_batch = int(cfg.engine.get("max_batch", 32))
    replica_kw: dict[str, Any] = {
        "ray_actor_options": cfg.replica_options,
        "max_ongoing_requests": cfg.max_ongoing_requests or 2 * max_batch,
        "request_router_config": RequestRouterConfig(request_router_class=AffinityRouter),
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 30.0,
        "graceful_shutdown_timeout_s": 30.0,
    }
    if cfg.autoscaling:
        replica_kw["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
            "initial_replicas": max(cfg.min_replicas or 0, min(cfg.replicas, cfg.max_replicas or cfg.replicas)),
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s, "downscale_delay_s": cfg.downscale_delay_s}
    else:
        replica_kw["num_replicas"] = cfg.replicas
    replica = serve.deployment(LlmpressReplica, name="LlmpressReplica", **replica_kw)
    gateway_cls = serve.ingress()(LlmpressGateway)
    gateway = serve.deployment(gateway_cls, name="LlmpressGateway", num_replicas=1, max_ongoing_requests=4096,
                               ray_actor_options={"num_cpus": 0})
    return gateway.bind(replica.bind(cfg.model, cfg.auth, cfg.host, cfg.threads_per_replica, cfg.engine, board),
                        cfg, board)


def start_ray(cfg: RayServeConfig) -> None:
    """Connect to `cfg.ray_address`, or start a local cluster with every address on loopback."""
    if ray.is_initialized():
        return
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, log_to_driver=False)
        return
    n = cfg.num_cpus or cfg.threads_per_replica * (cfg.max_replicas or cfg.replicas)
    # Ray turns a node address of 127.0.0.1 into the machine's outward IP, and its gRPC servers then
    # listen there; its single-machine mode (the one it uses on macOS / Windows) keeps the node, and so
    # every server, worker and agent, on loopback. Set in the environment for the processes Ray spawns.
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=n, log_to_driver=False,
             configure_logging=False)


def deploy(cfg: RayServeConfig) -> tuple[Any, Any]:
    """Start Ray (if needed) and Serve on 127.0.0.1, deploy the app and wait until it is running.

    Returns (DeploymentHandle of the gateway, MetricsBoard actor)."""
    from llmpress.server import is_loopback
    from llmpress.sources import resolve

    if not cfg.auth and not is_loopback(cfg.host):
        raise ConfigError(f"refusing to serve without API keys on {cfg.host}, which other machines can reach",
                          "bind to 127.0.0.1 or drop --no-auth", param="host")
    resolve(cfg.model)  # a bad model spec fails here, in one line, before any replica starts
    start_ray(cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    board = MetricsBoard.remote()
    handle = serve.run(build_application(cfg, board), name=APP_NAME, route_prefix="/", blocking=False)
    return handle, board


def wait_ready(url: str, timeout: float = 300.0) -> None:
    """Poll GET /ready through the gateway until a replica answers 200 (bounded)."""
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/ready", timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = e.__class__.__name__
        time.sleep(0.5)
    raise LlmpressError(f"the Ray Serve deployment did not become ready in {timeout:.0f} s (last: {last})",
                        "see the replica logs under /tmp/ray/session_latest/logs/serve")


def shutdown() -> None:
    """Delete the app, stop Serve and (if we started it) the local Ray cluster."""
    try:
        serve.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()


def replica_status() -> dict[str, Any]:
    """Per-deployment status and running replica count (from Serve's controller)."""
    st = serve.status()
    app = st.applications.get(APP_NAME)
    if app is None:
        return {}
    return {name: {"status": str(d.status.value if hasattr(d.status, "value") else d.status),
                   "replicas": dict(d.replica_states)} for name, d in app.deployments.items()}


def run(cfg: RayServeConfig, on_ready: Any = None) -> None:
    """Deploy, then block until SIGINT / SIGTERM; then shut Serve (and a local Ray) down cleanly."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        deploy(cfg)
        url = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{cfg.port}"
        wait_ready(url)
        if on_ready is not None:
            on_ready(url)
        while not stop.wait(1.0):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        shutdown()
