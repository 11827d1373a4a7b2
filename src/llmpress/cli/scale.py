"""`llmpress serve --replicas N | --ray-address | --backend vllm`: the serving paths beyond one process.

Not a command group of its own: `cli/serve.py` hands these options here, so `serve` stays one command.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import typer

from llmpress.cli.common import console, run_guarded
from llmpress.errors import ConfigError


def serve_scaled(*, model: str, host: str, port: int, backend: str, replicas: int, ray_address: str,
                 min_replicas: int, max_replicas: int, target_ongoing_requests: float, tensor_parallel: int,
                 pipeline_parallel: int, threads: int, no_auth: bool, engine: dict[str, Any]) -> None:
    """Dispatch to vLLM or to Ray Serve replicas; errors are one line and a non-zero exit."""

    def body() -> int:
        if backend == "vllm":
            if replicas or ray_address or min_replicas >= 0 or max_replicas >= 0:
                raise ConfigError("--backend vllm runs one vLLM server; replicas of it are not wired here",
                                  "drop --replicas / --ray-address (vLLM scales over GPUs with --tensor-parallel)",
                                  param="replicas")
            from llmpress.scale.vllm import VllmConfig, serve

            return serve(VllmConfig(model=model, host=host, port=port, tensor_parallel=tensor_parallel,
                                    pipeline_parallel=pipeline_parallel))
        if backend != "llmpress":
            raise ConfigError(f"unknown --backend {backend!r}", "use llmpress (default) or vllm", param="backend")
        if tensor_parallel != 1 or pipeline_parallel != 1:
            raise ConfigError("--tensor-parallel / --pipeline-parallel apply to --backend vllm only",
                              "use --replicas N to scale the llmpress engine", param="tensor_parallel")
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("--replicas / --ray-address need Ray Serve, which is not installed here",
                              "pip install 'llmpress[ray]'", param="replicas")
        from llmpress.registry.keys import KeyStore
        from llmpress.scale.ray_serve import RayServeConfig, run

        autoscale = min_replicas >= 0 or max_replicas >= 0
        cfg = RayServeConfig(model=model, replicas=replicas or max(1, min_replicas), host=host, port=port,
                             min_replicas=min_replicas if autoscale else None,
                             max_replicas=max_replicas if autoscale else None,
                             target_ongoing_requests=target_ongoing_requests, ray_address=ray_address or None,
                             threads_per_replica=threads or 1, auth=not no_auth, engine=engine)
        store = KeyStore()
        if not no_auth and not any(k["status"] == "active" for k in store.list()):
            console.print("[yellow]warning:[/] no active API keys: every request will get 401; "
                          "create one with `llmpress keys create NAME`")
        scaling = (f"autoscaling {cfg.min_replicas}..{cfg.max_replicas} replicas on "
                   f"{cfg.target_ongoing_requests:g} ongoing requests each" if cfg.autoscaling
                   else f"{cfg.replicas} replicas")
        console.print(f"starting {scaling} of {model} on Ray Serve "
                      f"({cfg.ray_address or 'local cluster on 127.0.0.1'}), {cfg.threads_per_replica} thread(s) each")
        dep: list[str] = []

        def ready(url: str) -> None:
            from llmpress.sources import resolve

            art = resolve(model)
            dep.append(store.start_deployment(art.id, host, port, {"replicas": cfg.replicas, "ray": True,
                                                                   "autoscaling": cfg.autoscaling,
                                                                   "auth": cfg.auth, **engine}))
            console.print(f"serving [bold]{art.name}[/] ({art.id}) on {url}  (Ctrl-C stops)")

        try:
            run(cfg, on_ready=ready)
        finally:
            if dep:
                store.stop_deployment(dep[0])
        return 0

    rc = run_guarded(body)
    if rc:
        raise typer.Exit(rc)
