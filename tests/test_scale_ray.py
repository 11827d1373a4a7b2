"""`llmpress serve --replicas`: a real local Ray cluster (127.0.0.1, 2 CPUs) with 2 replicas of tiny-llama.

One deployment for the module (Ray + Serve start in ~30-60 s here, so the module is `slow`): requests
reach both replicas, keys / rate limits / usage / metrics work through the gateway, a session sticks
to one replica, and a replica killed with SIGKILL mid-request is replaced without losing a request
(non-streaming requests are retried on the other replica; a started stream ends with an error event).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow

MODEL = "builtin:tiny-llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tiny: Any) -> Any:
    from llmpress.registry.keys import KeyStore
    from llmpress.scale import ray_serve as rs

    store = KeyStore()
    _, secret = store.create("scale-test")
    limited, limited_secret = store.create("scale-limited", requests_per_minute=3)
    cfg = rs.RayServeConfig(model=MODEL, replicas=2, port=free_port(), auth=True, threads_per_replica=1,
                            engine={"kv_cache_mb": 16, "max_batch": 8})
    rs.deploy(cfg)
    url = f"http://127.0.0.1:{cfg.port}"
    try:
        rs.wait_ready(url, 240)
        yield {"url": url, "secret": secret, "limited": limited, "limited_secret": limited_secret, "store": store,
               "rs": rs}
    finally:
        rs.shutdown()


def post(url: str, secret: str, body: dict[str, Any], session: str | None = None, timeout: float = 120) -> Any:
    headers = {"Authorization": f"Bearer {secret}"}
    if session:
        headers["x-session-id"] = session
    return httpx.post(url + "/v1/completions", json={"model": MODEL, **body}, headers=headers, timeout=timeout)


def test_every_ray_and_serve_socket_listens_on_loopback_only(cluster: Any) -> None:
    import ipaddress

    import psutil

    procs = [psutil.Process()] + psutil.Process().children(recursive=True)
    listening = []
    for p in procs:
        try:
            listening += [(c.laddr, p.name(), " ".join(p.cmdline())[:80]) for c in p.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    assert len(listening) >= 5  # gcs, raylet, workers, the Serve proxy...
    bad = []
    for addr, name, cmd in listening:
        ip = ipaddress.ip_address(addr.ip)
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not ip.is_loopback:
            bad.append((addr, name, cmd))
    assert not bad


def test_requests_are_served_by_both_replicas(cluster: Any) -> None:
    url, secret = cluster["url"], cluster["secret"]
    with ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda i: post(url, secret, {"prompt": f"hello {i}", "max_tokens": 4}, session=f"s{i}"),
                         range(24)))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    body = rs[0].json()
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 4
    replicas = {r.headers["x-llmpress-replica"] for r in rs}
    assert len(replicas) == 2


def test_keys_limits_usage_and_metrics_through_the_gateway(cluster: Any) -> None:
    url = cluster["url"]
    r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2}, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    # a key's requests share one replica (affinity by key), so its per-minute window is exact
    codes = [post(url, cluster["limited_secret"], {"prompt": "x", "max_tokens": 2}).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    rows = cluster["store"].usage(cluster["limited"].id)
    assert sum(1 for u in rows if u.status == 200) == 3
    # replicas push their metrics every 2 s: wait (bounded) until both show up with requests counted
    def served_by(text: str) -> set[str]:
        return {line.split('replica="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith("llmpress_requests_total{")}

    deadline = time.time() + 30
    text = ""
    while time.time() < deadline:
        text = httpx.get(url + "/metrics", timeout=10).text
        if ("llmpress_gateway_replicas_reporting 2.0" in text and len(served_by(text)) == 2
                and 'status="429"' in text):
            break
        time.sleep(1)
    assert "llmpress_gateway_replicas_reporting 2.0" in text
    assert text.count("# TYPE llmpress_requests_total counter") == 1
    assert len(served_by(text)) == 2, text[:2000]
    assert 'status="429"' in text


def test_a_session_sticks_to_one_replica(cluster: Any) -> None:
    url, secret = cluster["url"], cluster["secret"]
    seen = {post(url, secret, {"prompt": "same prefix " * 8, "max_tokens": 2}, session="conv-42")
            .headers["x-llmpress-replica"] for _ in range(6)}
    assert len(seen) == 1


def test_killed_replica_is_replaced_and_no_request_is_lost(cluster: Any) -> None:
    url, secret, rs = cluster["url"], cluster["secret"], cluster["rs"]
    probe = post(url, secret, {"prompt": "probe", "max_tokens": 1}, session="victim")
    victim_id, victim_pid = probe.headers["x-llmpress-replica"], int(probe.headers["x-llmpress-replica-pid"])

    def long_request(i: int) -> Any:
        # same session: routed to the victim, still decoding when it is killed
        return post(url, secret, {"prompt": f"long {i}", "max_tokens": 300, "ignore_eos": True}, session="victim")

    def short_request(i: int) -> Any:
        return post(url, secret, {"prompt": f"short {i}", "max_tokens": 8}, session=f"other-{i}")

    with ThreadPoolExecutor(12) as ex:
        longs = [ex.submit(long_request, i) for i in range(4)]
        time.sleep(0.5)
        os.kill(victim_pid, signal.SIGKILL)
        shorts = [ex.submit(short_request, i) for i in range(16)]
        results = [f.result(timeout=300) for f in longs + shorts]
    assert [r.status_code for r in results] == [200] * len(results), [r.text for r in results if r.status_code != 200]
    retried = [r for r in results[:4] if int(r.headers["x-llmpress-attempts"]) > 1]
    assert retried, [(victim_id, r.headers["x-llmpress-replica"], r.headers["x-llmpress-attempts"], r.elapsed)
                     for r in results[:4]]
    assert all(r.headers["x-llmpress-replica"] != victim_id for r in retried)
    assert all(r.json()["usage"]["completion_tokens"] == 300 for r in results[:4])
    # Serve replaces the dead replica: two RUNNING again, and requests reach two live pids
    deadline = time.time() + 180
    while time.time() < deadline and rs.replica_status()["LlmpressReplica"]["replicas"].get("RUNNING") != 2:
        time.sleep(2)
    assert rs.replica_status()["LlmpressReplica"]["replicas"].get("RUNNING") == 2
    rs.wait_ready(url, 120)
    with ThreadPoolExecutor(8) as ex:
        after = list(ex.map(lambda i: post(url, secret, {"prompt": f"after {i}", "max_tokens": 2}, session=f"a{i}"),
                            range(16)))
    assert all(r.status_code == 200 for r in after)
    pids = {int(r.headers["x-llmpress-replica-pid"]) for r in after}
    assert len(pids) == 2 and victim_pid not in pids


def test_a_started_stream_ends_with_an_error_event_when_its_replica_dies(cluster: Any) -> None:
    url, secret = cluster["url"], cluster["secret"]
    body = {"model": MODEL, "prompt": "stream", "max_tokens": 400, "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {secret}", "x-session-id": "stream-victim"}
    events: list[str] = []
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        pid = int(r.headers["x-llmpress-replica-pid"])
        killed = False
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == 3 and not killed:
                os.kill(pid, signal.SIGKILL)
                killed = True
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])
    assert err["error"]["code"] == "replica_failed"
    assert len(events) < 400
