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
