"""The registry, keys, usage and deployment rows on SQLite and on a real PostgreSQL server, and one token
budget enforced by two processes that share a PostgreSQL registry under concurrent load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from pg import make_artifact

from llmpress.errors import AuthError, NotFoundError, RegistryError


def test_registry_lookup_lineage_remove(backend_registry) -> None:
    from llmpress.artifact import Step, create_artifact

    reg = backend_registry
    base = make_artifact(reg, "pg-base")
    with create_artifact("pg-child", Step("quantize", {"scheme": "int8"}), parent=base) as w:
        (w.path / "f.txt").write_text("child")
    child = w.artifact
    assert reg.get(child.id[:6]).id == child.id and reg.get("pg-child").id == child.id
    assert [m.name for m in reg.lineage(child.id)] == ["pg-child", "pg-base"]
    assert reg.get(child.id).step_params == {"scheme": "int8"}  # JSON round-trips on both backends
    reg.add_evaluation(child, "wikitext", "quality", {"perplexity": 12.5})
    assert reg.evaluations(child.id)[0].metrics == {"perplexity": 12.5}
    with pytest.raises(RegistryError):
        reg.remove(base.id)
    assert set(reg.remove(base.id, recursive=True)) == {base.id, child.id}
    assert reg.list() == []
    with pytest.raises(NotFoundError):
        reg.get(base.id)


def test_keys_usage_and_deployment_rows(backend_registry) -> None:
    from llmpress.registry.keys import KeyStore
    from llmpress.registry.tables import DeploymentRow

    ks = KeyStore(backend_registry)
    info, secret = ks.create("svc", scopes=["chat"], token_budget=100)
    assert ks.verify(secret).id == info.id
    ks.record_usage(info.id, "r1", "m", "chat", 5, 7, 1.5, 200)
    assert ks.verify(secret).tokens_used == 12
    rid = ks.reserve(info.id, 80, ttl_s=60)
    assert rid is not None
    assert ks.reserve(info.id, 9, ttl_s=60) is None  # 12 used + 80 held + 9 > 100
    ks.record_usage(info.id, "r2", "m", "chat", 10, 20, 2.0, 200, reservation=rid)  # charge 30, release 80
    assert ks.verify(secret).tokens_used == 42 and ks.verify(secret).tokens_reserved == 0
    assert [(u.request_id, u.tokens_in + u.tokens_out) for u in ks.usage(info.id)] == [("r1", 12), ("r2", 30)]
    _, secret2 = ks.rotate("svc")
    with pytest.raises(AuthError):
        ks.verify(secret)
    ks.revoke(info.id)
    with pytest.raises(AuthError, match="revoked"):
        ks.verify(secret2)
    dep = ks.start_deployment("abc", "127.0.0.1", 8000, {"max_batch": 4}, alias="prod")
    ks.stop_deployment(dep)
    with backend_registry.session() as s:
        row = s.get(DeploymentRow, dep)
    assert row.alias == "prod" and row.config == {"max_batch": 4} and row.stopped_at is not None


# Each worker process: threads that reserve an estimate, "serve", settle the actual tokens and record usage,
# until the budget refuses them (bounded in iterations and time).
_WORKER = textwrap.dedent("""
    import json, random, sys, threading, time
    from llmpress.registry.keys import KeyStore
    key_id, seed = sys.argv[1], int(sys.argv[2])
    ks = KeyStore()
    served, refused, lock = [], [0], threading.Lock()
    def worker(t):
        rng = random.Random(seed * 100 + t)
        deadline = time.monotonic() + 60
        for i in range(400):
            if time.monotonic() > deadline:
                break
            est = rng.randint(5, 20)
            rid = ks.reserve(key_id, est, 60)
            if rid is None:
                with lock:
                    refused[0] += 1
                if refused[0] > 40:
                    break
                continue
            actual = est if i % 2 else rng.randint(1, est)  # half use all they reserved: no refund hides an overshoot
            ks.record_usage(key_id, f"p{seed}-{t}-{i}", "m", "chat", actual, 0, 0.0, 200, reservation=rid)
            with lock:
                served.append(actual)
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    print(json.dumps({"served": len(served), "tokens": sum(served), "refused": refused[0]}))
""")


def test_two_processes_share_one_budget_on_postgresql(pg_url) -> None:
    from llmpress.registry import Registry
    from llmpress.registry.keys import KeyStore
    from llmpress.registry.tables import ApiKeyRow

    budget = 1500
    ks = KeyStore(Registry(pg_url))
    info, _ = ks.create("shared", token_budget=budget)
    env = dict(os.environ, LLMPRESS_DATABASE_URL=pg_url)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, info.id, str(seed)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    rows = ks.usage(info.id)
    tokens_rows = sum(r.tokens_in for r in rows)
    with ks.reg.session() as s:
        row = s.get(ApiKeyRow, info.id)
    used = row.tokens_used
    assert row.tokens_reserved == 0  # every reservation was settled
    assert all(r["served"] > 0 and r["refused"] > 0 for r in results), results  # both served, both were refused
    assert used == tokens_rows == sum(r["tokens"] for r in results)  # every token charged exactly once
    assert used <= budget  # never overspent, although both processes raced for the last tokens
    assert used > budget - 20 * 8  # and the budget was really used up (at most one estimate per thread left)


@pytest.mark.slow
def test_two_serve_processes_share_one_budget_on_postgresql(pg_url, monkeypatch, tiny) -> None:
    """Two `llmpress serve` processes on one PostgreSQL registry, 8 concurrent clients spread over both:
    together they never spend more than the key's budget, and every token served is charged once."""
    import signal
    import socket
    import threading
    import time

    import httpx

    from llmpress.registry import get_registry
    from llmpress.registry.keys import KeyStore
    from llmpress.registry.tables import ApiKeyRow
    from llmpress.sources import resolve

    monkeypatch.setenv("LLMPRESS_DATABASE_URL", pg_url)
    reg = get_registry()  # migrated once here, so the two servers do not race to create the schema
    resolve("builtin:tiny-llama")  # registered here for the same reason
    budget = 600
    info, secret = KeyStore(reg).create("shared-serve", token_budget=budget)
    ports, procs = [], []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    env = dict(os.environ, LLMPRESS_DATABASE_URL=pg_url)
    for port in ports:
        procs.append(subprocess.Popen([sys.executable, "-m", "llmpress.cli.main", "serve", "builtin:tiny-llama",
                                       "--port", str(port), "--kv-cache-mb", "16", "--log-level", "warning"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for port, p in zip(ports, procs, strict=True):
            deadline = time.monotonic() + 180
            while True:
                assert p.poll() is None, p.stderr.read()
                assert time.monotonic() < deadline, "serve did not become ready"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
        served, refused, lock = [], {p: 0 for p in ports}, threading.Lock()

        def client(i: int) -> None:
            port = ports[i % 2]
            for _ in range(30):
                r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                               headers={"Authorization": f"Bearer {secret}"},
                               json={"model": "tiny-llama", "prompt": "Hello there", "max_tokens": 12,
                                     "temperature": 0, "ignore_eos": True})
                with lock:
                    if r.status_code == 200:
                        served.append(r.json()["usage"]["total_tokens"])
                    else:
                        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
                        refused[port] += 1
                if refused[port] >= 3:
                    return

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        [t.start() for t in threads]
        [t.join(600) for t in threads]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
    with reg.session() as s:
        row = s.get(ApiKeyRow, info.id)
    usage = [u for u in KeyStore(reg).usage(info.id) if u.status == 200]
    assert all(n > 0 for n in refused.values()), refused  # both servers hit the shared budget
    assert row.tokens_used == sum(served) == sum(u.tokens_in + u.tokens_out for u in usage)
    assert row.tokens_used <= budget and row.tokens_reserved == 0
    assert row.tokens_used > budget - 8 * 25  # used up, up to what the in-flight reservations held back
