"""`llmpress serve MODEL`: the OpenAI-compatible server (continuous batching engine + FastAPI + uvicorn)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import typer

from llmpress.cli.common import console, run_guarded
from llmpress.errors import ConfigError


def serve_on_main_thread(app: Any, config: Any) -> None:
    """uvicorn in a helper thread, the engine loop on this (main) thread, where the model was loaded
    (see server.driver: one OpenMP pool, twice the decode speed on 2 cores). SIGINT / SIGTERM ask
    uvicorn to exit; its lifespan drains in-flight requests and stops the engine loop."""
    import uvicorn

    server = uvicorn.Server(config)
    driver = app.state.driver  # built with loop="caller": the lifespan never starts a second loop
    http = threading.Thread(target=server.run, name="llmpress-http", daemon=True)

    def on_signal(signum: int, frame: Any) -> None:
        server.should_exit = True
        driver.wake()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        http.start()
        # The loop returns when the lifespan's shutdown calls stop(); a server that fails to start
        # (port in use) ends its thread without that, so watch the thread too.
        watcher = threading.Thread(target=lambda: (http.join(), driver.stop(0)), daemon=True)
        watcher.start()
        driver.run_here()
        http.join(60)
        if server.started is False and not server.should_exit:
            raise ConfigError(f"the HTTP server could not start on {config.host}:{config.port}",
                              "pick a free --port (another process may be listening there)", param="port")
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _serve_multi(specs: list[str], host: str, port: int, no_auth: bool, follow: bool, ab: str, cache: Any,
                 engine_kw: dict[str, Any], log_level: str) -> None:
    """Several models, or one alias to follow: `ops.multi.MultiModelApp`, one engine thread per model."""
    import uvicorn

    from llmpress.ops.ab import load
    from llmpress.ops.multi import MultiModelApp
    from llmpress.ops.serving import OpsConfig, install_ops
    from llmpress.registry.keys import KeyStore
    from llmpress.server import build_app

    def build(spec: str) -> tuple[Any, Any]:
        app, art = build_app(spec, host=host, auth=not no_auth, engine_loop="background", **engine_kw)
        test = load(ab) if ab else None  # re-read: after `ab stop` a swapped-in model is no arm any more
        in_test = test is not None and test.status == "running" and spec in {a.name for a in test.arms}
        install_ops(app, OpsConfig(ab_test=ab if in_test else None, arm=spec if in_test else None, cache=cache,
                                   alias=spec), art.id)
        return app, art

    front = MultiModelApp(specs, build, follow=follow, ab_test=ab or None)
    store = KeyStore()
    deps = []
    for s in front.slots:
        console.print(f"serving [bold]{s.name}[/] = {s.current.artifact.name} ({s.current.artifact.id})"
                      f"{' (follows the alias)' if s.follows else ''}")
        deps.append(store.start_deployment(s.current.artifact.id, host, port, {"models": specs, "ab": ab or None,
                                                                               "auth": not no_auth}, alias=s.name))
    console.print(f"on http://{host}:{port}")
    # uvicorn in a helper thread (there it installs no signal handlers and re-raises none after
    # shutdown); SIGINT / SIGTERM ask it to exit, then the deployment rows are closed
    server = uvicorn.Server(uvicorn.Config(front, host=host, port=port, log_level=log_level, access_log=False,
                                           timeout_graceful_shutdown=30))
    http = threading.Thread(target=server.run, name="llmpress-http", daemon=True)

    def on_signal(signum: int, frame: Any) -> None:
        server.should_exit = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        http.start()
        while http.is_alive():
            http.join(0.5)
        if server.started is False and not server.should_exit:
            raise ConfigError(f"the HTTP server could not start on {host}:{port}",
                              "pick a free --port (another process may be listening there)", param="port")
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        for d in deps:
            store.stop_deployment(d)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        model: str = typer.Argument(None, help="builtin:NAME, alias, artifact id/name, local HF dir or .gguf"),
        models: list[str] = typer.Option(None, "--model", help="serve several models in one process: "
                                                              "--model prod --model canary"),
        follow: bool = typer.Option(True, help="follow alias changes without restart (hot swap)"),
        host: str = typer.Option("127.0.0.1", help="bind address"),
        port: int = typer.Option(8000, help="TCP port"),
        max_batch: int = typer.Option(32, help="sequences decoded together"),
        max_tokens_per_step: int = typer.Option(512, help="token budget of one step (decodes + prefill chunk)"),
        max_waiting: int = typer.Option(256, help="bounded request queue; beyond it requests get 503 + Retry-After"),
        kv_cache_mb: float = typer.Option(256.0, help="KV-cache memory budget (MiB), preallocated at start"),
        block_size: int = typer.Option(16, help="tokens per KV block"),
        prefix_caching: bool = typer.Option(True, help="reuse KV blocks of shared prompt prefixes"),
        threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)"),
        no_auth: bool = typer.Option(False, "--no-auth", help="serve without API keys (loopback binds only)"),
        log_level: str = typer.Option("info", help="uvicorn / llmpress log level"),
        ab: str = typer.Option("", "--ab", help="serve as one arm of this running A/B test (records responses, "
                                                "takes POST /v1/feedback)"),
        arm: str = typer.Option("", help="the arm (default: the arm pinned to the served artifact)"),
        response_cache: bool = typer.Option(False, help="cache non-streamed temperature-0 responses"),
        cache_entries: int = typer.Option(1024, help="response cache: max entries"),
        cache_mb: float = typer.Option(64.0, help="response cache: max MiB"),
        cache_ttl: float = typer.Option(600.0, help="response cache: seconds an entry lives"),
        cache_shared: bool = typer.Option(False, help="response cache: share entries across API keys"),
        replicas: int = typer.Option(0, help="run N replicas on Ray Serve (llmpress[ray]); 0: one process"),
        ray_address: str = typer.Option("", help="an existing Ray cluster (default: a local one on 127.0.0.1)"),
        min_replicas: int = typer.Option(-1, help="autoscale on ongoing requests between --min-replicas ..."),
        max_replicas: int = typer.Option(-1, help="... and --max-replicas"),
        target_ongoing_requests: float = typer.Option(16.0, help="autoscaling target per replica"),
        backend: str = typer.Option("llmpress", help="llmpress (this engine) or vllm (GPU machines)"),
        tensor_parallel: int = typer.Option(1, help="vLLM: GPUs per model shard (tensor parallel)"),
        pipeline_parallel: int = typer.Option(1, help="vLLM: pipeline stages"),
    ) -> None:
        """Serve MODEL over HTTP: /v1/completions, /v1/chat/completions, /v1/models, /generate, /metrics."""
        if backend != "llmpress" or replicas or ray_address or min_replicas >= 0 or max_replicas >= 0:
            from llmpress.cli.scale import serve_scaled

            serve_scaled(model=model, host=host, port=port, backend=backend, replicas=replicas,
                         ray_address=ray_address, min_replicas=min_replicas, max_replicas=max_replicas,
                         target_ongoing_requests=target_ongoing_requests, tensor_parallel=tensor_parallel,
                         pipeline_parallel=pipeline_parallel, threads=threads, no_auth=no_auth,
                         engine={"max_batch": max_batch, "max_tokens_per_step": max_tokens_per_step,
                                 "max_waiting": max_waiting, "kv_cache_mb": kv_cache_mb, "block_size": block_size,
                                 "enable_prefix_caching": prefix_caching})
            return

        def body() -> None:
            import logging
            import time

            import uvicorn

            from llmpress.registry.keys import KeyStore
            from llmpress.server import build_app
            from llmpress.server.logs import setup_json_logging

            t_start = time.perf_counter()
            setup_json_logging(getattr(logging, log_level.upper(), logging.INFO))
            if no_auth:
                console.print(f"[yellow]warning:[/] serving WITHOUT API keys on {host} (loopback only); "
                              "anyone on this machine can use it")
            from llmpress.ops.cache import CacheConfig
            from llmpress.ops.deployments import alias_target
            from llmpress.ops.serving import OpsConfig, install_ops

            specs = ([model] if model else []) + list(models or [])
            if not specs:
                raise ConfigError("no model to serve", "pass MODEL, or --model NAME once per model", param="model")
            cache = CacheConfig(cache_entries, int(cache_mb * 2**20), cache_ttl, cache_shared) if response_cache else None
            engine_kw: dict[str, Any] = dict(max_batch=max_batch, max_tokens_per_step=max_tokens_per_step,
                                             max_waiting=max_waiting, kv_cache_mb=kv_cache_mb, block_size=block_size,
                                             enable_prefix_caching=prefix_caching, num_threads=threads or None)
            if len(specs) > 1 or (follow and alias_target(specs[0])):
                _serve_multi(specs, host, port, no_auth, follow, ab, cache, engine_kw, log_level)
                return
            model_spec = specs[0]
            app, art = build_app(model_spec, host=host, auth=not no_auth, engine_loop="caller", **engine_kw)
            alias = model_spec if alias_target(model_spec) else None
            install_ops(app, OpsConfig(ab_test=ab or None, arm=arm or None, cache=cache, alias=alias), art.id)
            store = KeyStore()
            if not no_auth and not any(k["status"] == "active" for k in store.list()):
                console.print("[yellow]warning:[/] no active API keys: every request will get 401; "
                              "create one with `llmpress keys create NAME`")
            eng = app.state.engine
            runner = getattr(eng, "runner", None)
            kv = (f"KV cache {runner.num_blocks} blocks x {block_size} tokens ({runner.kv_cache_mb:.0f} MiB)"
                  if runner is not None else "ONNX Runtime GenAI (its own KV cache)")
            console.print(f"serving [bold]{art.name}[/] ({art.id}) on http://{host}:{port}  {kv}; "
                          f"loaded in {time.perf_counter() - t_start:.1f} s")
            dep = store.start_deployment(art.id, host, port, {"max_batch": max_batch, "kv_cache_mb": kv_cache_mb,
                                                              "auth": not no_auth, "ab": ab or None,
                                                              "response_cache": response_cache}, alias=alias)
            try:
                serve_on_main_thread(app, uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                         access_log=False, timeout_graceful_shutdown=30))
            finally:
                store.stop_deployment(dep)

        run_guarded(body)
