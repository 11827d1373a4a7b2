"""A served arm of an A/B test, live on loopback: arm headers and `llmpress` field, responses recorded in the
registry, POST /v1/feedback, the response cache (per key, never bypassing auth), ops metrics; and the shipped
Grafana dashboard and Prometheus alerts only use series a live server exports."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pg import make_artifact

from llmpress.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    def __init__(self, app: Any, url: str, server: Any, thread: threading.Thread, keys: dict[str, str]) -> None:
        self.app, self.url, self.server, self.thread, self.keys = app, url, server, thread, keys

    def post(self, path: str, body: dict[str, Any], key: str = "a", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=60, **kw)


@pytest.fixture(scope="module")
def live(tiny):
    import uvicorn

    from llmpress.ops import ab
    from llmpress.ops.cache import CacheConfig
    from llmpress.ops.deployments import deploy
    from llmpress.ops.serving import OpsConfig, install_ops
    from llmpress.registry import get_registry
    from llmpress.registry.keys import KeyStore
    from llmpress.server import build_app

    reg = get_registry()
    deploy("builtin:tiny-llama", "srv-prod", registry=reg)
    deploy(make_artifact(reg, "srv-canary").id, "srv-canary", registry=reg)
    ab.start("srv-exp", ab.parse_arms("srv-prod=50,srv-canary=50"), registry=reg)
    ks = KeyStore(reg)
    keys = {"a": ks.create("ops-a")[1], "b": ks.create("ops-b")[1], "poor": ks.create("ops-poor", token_budget=5)[1]}
    app, art = build_app("srv-prod", auth=True, kv_cache_mb=16, max_batch=8)
    install_ops(app, OpsConfig(ab_test="srv-exp", cache=CacheConfig(max_entries=64), alias="srv-prod"), art.id)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield Live(app, f"http://127.0.0.1:{port}", server, th, keys)
    server.should_exit = True
    th.join(30)


REQ = {"model": "srv-prod", "prompt": "Hello there", "max_tokens": 6, "temperature": 0, "ignore_eos": True}


def test_arm_headers_recording_and_feedback(live) -> None:
    from llmpress.ops import ab

    r = live.post("/v1/completions", {**REQ, "user": "alice", "max_tokens": 5})
    assert r.status_code == 200, r.text
    rid = r.headers["x-llmpress-response-id"]
    assert r.headers["x-llmpress-arm"] == "srv-prod" and r.headers["x-llmpress-ab-test"] == "srv-exp"
    body = r.json()
    assert body["llmpress"] == {"response_id": rid, "ab_test": "srv-exp", "arm": "srv-prod"}
    assert body["id"] == f"cmpl-{rid}" and body["usage"]["completion_tokens"] == 5
    with httpx.stream("POST", live.url + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {live.keys['a']}"},
                      json={"model": "srv-prod", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                            "stream": True, "user": "bob"}) as s:
        assert s.status_code == 200 and s.headers["x-llmpress-arm"] == "srv-prod"
        sid = s.headers["x-llmpress-response-id"]
        assert "[DONE]" in "".join(s.iter_text())
    # feedback by the bare id or the completion id; both land on the arm that served it
    f = live.post("/v1/feedback", {"id": f"cmpl-{rid}", "rating": 1, "comment": "good"})
    assert f.status_code == 200 and f.json() == {"id": rid, "ab_test": "srv-exp", "arm": "srv-prod", "recorded": True}
    deadline = time.monotonic() + 10
    while live.post("/v1/feedback", {"id": sid, "label": "helpful"}).status_code != 200:  # settles as the stream closes
        assert time.monotonic() < deadline
        time.sleep(0.1)
    rep = ab.report("srv-exp")
    prod = next(a for a in rep.arms if a.arm == "srv-prod")
    assert prod.requests >= 2 and prod.feedback_n >= 1 and prod.labels.get("helpful") == 1
    assert prod.ttft_p50_ms is not None and prod.tokens_per_s
    from llmpress.registry import get_registry
    from llmpress.registry.ops import AbResponseRow

    with get_registry().session() as s:
        assert s.get(AbResponseRow, rid).user == "alice" and s.get(AbResponseRow, sid).user == "bob"


def test_feedback_bad_input_is_4xx_json(live) -> None:
    cases = [({"id": "resp-nope", "rating": 1}, 404), ({"id": "x"}, 400), ({"rating": 1}, 422),
             ({"id": "x", "rating": 1, "extra": 2}, 422)]
    for body, status in cases:
        r = live.post("/v1/feedback", body)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()["error"]) >= {"message", "type"}
    assert live.post("/v1/feedback", {"id": "x", "rating": 1}, key="").status_code == 401


def test_response_cache_per_key_and_never_past_auth(live) -> None:
    body = {**REQ, "prompt": "cache me", "max_tokens": 7}
    first = live.post("/v1/completions", body)
    assert first.status_code == 200 and first.headers["x-llmpress-cache"] == "miss"
    again = live.post("/v1/completions", body)
    assert again.headers["x-llmpress-cache"] == "hit"
    assert again.json()["choices"] == first.json()["choices"]
    # a hit is a new response of the arm: its own id (header = llmpress field), recorded, open to feedback
    hit_id = again.headers["x-llmpress-response-id"]
    assert hit_id != first.headers["x-llmpress-response-id"] and again.json()["llmpress"]["response_id"] == hit_id
    assert live.post("/v1/feedback", {"id": hit_id, "rating": 0}).status_code == 200
    assert live.post("/v1/completions", body, key="b").headers["x-llmpress-cache"] == "miss"  # another key
    assert live.post("/v1/completions", body, key="").status_code == 401  # a hit never skips auth
    sampled = live.post("/v1/completions", {**body, "temperature": 0.8, "seed": 1})
    assert "x-llmpress-cache" not in sampled.headers  # not deterministic: not cached
    stats = live.app.state.response_cache.stats()
    assert stats["hits"] >= 1 and stats["misses"] >= 2


def test_budget_rejection_and_ops_metrics(live) -> None:
    r = live.post("/v1/completions", {**REQ, "prompt": "too long for a 5-token budget"}, key="poor")
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    text = httpx.get(live.url + "/metrics").text
    assert re.search(r'llmpress_model_info\{[^}]*alias="srv-prod"[^}]*arm="srv-prod"', text)
    assert re.search(r"llmpress_budget_rejections_total 1\.0", text)
    assert "llmpress_response_cache_hits_total" in text and "llmpress_queue_capacity 256.0" in text
    assert re.search(r'llmpress_ab_responses_total\{ab_test="srv-exp",arm="srv-prod",status="200"\}', text)


def test_serving_an_artifact_that_is_not_the_arm_is_refused(live, tiny) -> None:
    from llmpress.ops.serving import OpsConfig, install_ops

    with pytest.raises(ConfigError, match="not arm 'srv-canary'"):
        install_ops(live.app, OpsConfig(ab_test="srv-exp", arm="srv-canary"), tiny.id)


# -- monitoring: dashboard and alert rules -------------------------------------------------------
def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\bllmpress_[a-z_]+", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def _exported(text: str) -> set[str]:
    out = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            out.add(name)
            if kind == "counter":
                out.add(name + "_total")
    return out


def test_alert_rules_are_valid_and_use_exported_series(live) -> None:
    path = ROOT / "deploy/prometheus/alerts.yml"
    doc = yaml.safe_load(path.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"LlmpressQueueSaturated", "LlmpressHighErrorRate", "LlmpressTTFTP99High", "LlmpressKVCacheFull",
            "LlmpressBudgetExhausted"} <= names and len(names) == len(rules)
    exported = _exported(httpx.get(live.url + "/metrics").text)
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert re.fullmatch(r"\d+[smh]", r["for"]) and r["labels"]["severity"] in ("info", "warning", "critical")
        assert r["annotations"]["summary"] and r["expr"].count("(") == r["expr"].count(")")
        assert _metric_names(r["expr"]) <= exported, (r["alert"], _metric_names(r["expr"]) - exported)
    promtool = shutil.which("promtool")
    if promtool:  # the real checker where it is installed (Debian `prometheus`, ~100 MB: not pulled by make)
        res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


def test_grafana_dashboard_uses_exported_series(live) -> None:
    dash = json.loads((ROOT / "deploy/grafana/llmpress.json").read_text())
    assert dash["uid"] == "llmpress" and dash["panels"]
    exported = _exported(httpx.get(live.url + "/metrics").text)
    ids, titles = set(), []
    for p in dash["panels"]:
        assert p["targets"] and {"x", "y", "w", "h"} <= set(p["gridPos"])
        ids.add(p["id"])
        titles.append(p["title"])
        for t in p["targets"]:
            assert _metric_names(t["expr"]) <= exported, (p["title"], _metric_names(t["expr"]) - exported)
    assert len(ids) == len(dash["panels"])
    assert any("Per model" in t for t in titles) and any("A/B arm" in t for t in titles)
