"""`llmpress serve --min-replicas 1 --max-replicas 2`: Ray Serve adds a replica when ongoing requests exceed
the target and the new one serves traffic. A real local Ray cluster on 127.0.0.1; slow (~1-2 min)."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow

MODEL = "builtin:tiny-llama"


def test_autoscaling_adds_a_replica_under_load(tiny: Any) -> None:
    from llmpress.scale import ray_serve as rs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = rs.RayServeConfig(model=MODEL, replicas=1, min_replicas=1, max_replicas=2, target_ongoing_requests=2,
                            upscale_delay_s=1.0, downscale_delay_s=600.0, port=port, auth=False,
                            engine={"kv_cache_mb": 16, "max_batch": 16})
    rs.deploy(cfg)
    url = f"http://127.0.0.1:{port}"
    try:
        rs.wait_ready(url, 240)
        assert rs.replica_status()["LlmpressReplica"]["replicas"].get("RUNNING") == 1

        def req(i: int) -> Any:
            return httpx.post(url + "/v1/completions", timeout=300,
                              json={"model": MODEL, "prompt": f"load {i}", "max_tokens": 200, "ignore_eos": True})

        replicas: set[str] = set()
        codes: list[int] = []
        deadline = time.time() + 180
        with ThreadPoolExecutor(12) as ex:
            while time.time() < deadline and len(replicas) < 2:
                for r in ex.map(req, range(12)):  # 12 ongoing >> target 2: Serve should scale up
                    codes.append(r.status_code)
                    if r.status_code == 200:
                        replicas.add(r.headers["x-llmpress-replica"])
        assert set(codes) == {200}
        assert rs.replica_status()["LlmpressReplica"]["replicas"].get("RUNNING") == 2
        assert len(replicas) == 2
    finally:
        rs.shutdown()
