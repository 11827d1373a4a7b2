"""Several models in one process (`MultiModelApp`), live on loopback: dispatch by `model`, merged /v1/models and
/metrics, in-process A/B assignment, and a hot swap under 16 concurrent streaming clients that drops nothing
and never mixes tokens of the two models."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from live import wait_ready
from safetensors.torch import load_file, save_file

N_TOK = 32


def _variant(tiny):  # type: ignore[no-untyped-def]
    """tiny-llama with two MLP projections negated: same shapes and tokenizer, different greedy text."""
    from llmpress.artifact import Step, create_artifact

    with create_artifact("tiny-llama-variant", Step("test", {"negated": "mlp.down_proj 0-1"}), parent=tiny) as w:
        for p in tiny.path.iterdir():
            if p.is_file() and p.name not in ("llmpress.json", "model.safetensors"):
                shutil.copy(p, w.path / p.name)
        sd = load_file(tiny.path / "model.safetensors")
        for i in (0, 1):
            sd[f"model.layers.{i}.mlp.down_proj.weight"] = -sd[f"model.layers.{i}.mlp.down_proj.weight"] * 3
        save_file({k: v.contiguous() for k, v in sd.items()}, w.path / "model.safetensors", metadata={"format": "pt"})
    return w.artifact


@pytest.fixture(scope="module")
def multi(tiny):
    import uvicorn

    from llmpress.ops import ab
    from llmpress.ops.deployments import deploy
    from llmpress.ops.multi import MultiModelApp
    from llmpress.ops.serving import OpsConfig, install_ops
    from llmpress.server import build_app

    variant = _variant(tiny)
    deploy(tiny.id, "hs", note="A")
    deploy(variant.id, "hs-other")
    # clients reach the test through its name (or its alias, here not one of the slots); naming a slot skips it
    ab.start("hs-exp", ab.parse_arms("hs=50,hs-other=50"), alias="hs-public")

    def build(spec: str) -> tuple[Any, Any]:  # as `llmpress serve --model hs --model hs-other --ab hs-exp` does
        app, art = build_app(spec, auth=False, kv_cache_mb=16, max_batch=32, engine_loop="background")
        running = ab.load("hs-exp").status == "running"
        install_ops(app, OpsConfig(ab_test="hs-exp" if running else None, arm=spec if running else None,
                                   alias=spec), art.id)
        return app, art

    front = MultiModelApp(["hs", "hs-other"], build, follow=True, poll_s=0.2, ab_test="hs-exp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(front, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and th.is_alive(), "server did not start"
        time.sleep(0.05)
    yield front, f"http://127.0.0.1:{port}", tiny, variant
    server.should_exit = True
    th.join(30)


def _complete(url: str, model: str, **kw: Any) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"model": model, "prompt": "Once upon a time",
                                                     "max_tokens": N_TOK, "temperature": 0, "ignore_eos": True,
                                                     **kw}, timeout=120)


def _stream(url: str, model: str) -> tuple[int, str, bool]:
    text, done = [], False
    with httpx.stream("POST", url + "/v1/completions", timeout=120,
                      json={"model": model, "prompt": "Once upon a time", "max_tokens": N_TOK, "temperature": 0,
                            "ignore_eos": True, "stream": True}) as r:
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                doc = json.loads(line[6:])
                text += [c["text"] for c in doc.get("choices", [])]
        return r.status_code, "".join(text), done


def test_two_models_one_process(multi) -> None:
    front, url, tiny, variant = multi
    models = httpx.get(url + "/v1/models").json()["data"]
    assert [(m["id"], m["root"]) for m in models] == [("hs", tiny.id), ("hs-other", variant.id)]
    a, b = _complete(url, "hs"), _complete(url, "hs-other")
    assert a.status_code == b.status_code == 200
    assert a.json()["choices"][0]["text"] != b.json()["choices"][0]["text"]
    assert a.headers["x-llmpress-arm"] == "hs" and b.headers["x-llmpress-arm"] == "hs-other"
    assert _complete(url, tiny.id).json()["choices"][0]["text"] == a.json()["choices"][0]["text"]  # by artifact id
    r = _complete(url, "nope")
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    metrics = httpx.get(url + "/metrics").text
    assert 'model="hs"' in metrics and 'model="hs-other"' in metrics
    assert httpx.get(url + "/ready").status_code == 200


def test_ab_test_alias_routes_sticky_arms(multi) -> None:
    front, url, _, _ = multi
    arms = {}
    for u in range(12):
        r = _complete(url, "hs-exp", user=f"user-{u}", max_tokens=2)
        assert r.status_code == 200, r.text
        arms[u] = r.headers["x-llmpress-arm"]
        assert arms[u] == front.ab.assign(f"user-{u}").name
    assert set(arms.values()) == {"hs", "hs-other"}
    assert _complete(url, "hs-exp", user="user-3", max_tokens=2).headers["x-llmpress-arm"] == arms[3]  # sticky


def test_ab_stop_ends_routing(multi) -> None:
    from llmpress.ops import ab
    from llmpress.ops.deployments import deploy

    front, url, tiny, variant = multi
    assert _complete(url, "hs-exp", user="u1", max_tokens=2).status_code == 200
    # while the test runs its arms stay pinned: moving an arm's alias is refused, the pinned model keeps serving
    slot = front.slot("hs")
    deploy(variant.id, "hs")
    deadline = time.monotonic() + 60
    while slot.failed != variant.id:
        assert time.monotonic() < deadline, "the refused swap was not noticed"
        time.sleep(0.05)
    assert slot.swaps == 0 and slot.current.artifact.id == tiny.id
    assert _complete(url, tiny.id, max_tokens=2).status_code == 200
    deploy(tiny.id, "hs")  # back where it was: the watcher forgets the refusal
    while slot.failed is not None:
        assert time.monotonic() < deadline, "the watcher did not see the alias come back"
        time.sleep(0.05)
    ab.stop("hs-exp")
    deadline = time.monotonic() + 30
    while front.ab.status == "running":
        assert time.monotonic() < deadline, "the server did not notice the stopped test"
        time.sleep(0.05)
    r = _complete(url, "hs-exp", user="u1", max_tokens=2)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_hot_swap_under_16_streaming_clients(multi) -> None:
    """(After the A/B test stopped: while it runs, its arms stay pinned and a swap is refused.)"""
    from llmpress.ops.deployments import deploy

    front, url, tiny, variant = multi
    slot = front.slot("hs")
    text_a = _complete(url, "hs").json()["choices"][0]["text"]
    text_b = _complete(url, "hs-other").json()["choices"][0]["text"]
    assert text_a != text_b
    results: list[tuple[int, str, bool, float]] = []
    lock = threading.Lock()
    swapped_at: list[float] = []

    def client() -> None:
        for _ in range(4):
            t = time.monotonic()
            status, text, done = _stream(url, "hs")
            with lock:
                results.append((status, text, done, t))

    threads = [threading.Thread(target=client) for _ in range(16)]
    [t.start() for t in threads]
    time.sleep(0.3)
    deploy(variant.id, "hs", note="B")  # the alias moves while 16 streams run
    deadline = time.monotonic() + 120
    while slot.swaps < 1:
        assert time.monotonic() < deadline, "the server did not follow the alias"
        time.sleep(0.05)
    swapped_at.append(time.monotonic())
    [t.join(300) for t in threads]
    assert len(results) == 64
    assert all(status == 200 and done for status, _, done, _ in results)  # nothing dropped or cut
    texts = [text for _, text, _, _ in results]
    assert set(texts) <= {text_a, text_b}  # each stream came whole from one model: no tokens mixed
    assert text_b in texts  # the streams started after the swap got the new model ...
    assert text_a in texts  # ... and those in flight before it finished on the old one
    print(f"hot swap: {texts.count(text_a)} streams on the old model, {texts.count(text_b)} on the new")
    after = _complete(url, "hs").json()
    assert after["choices"][0]["text"] == text_b and slot.current.artifact.id == variant.id
    deadline = time.monotonic() + 60
    while slot.retired:  # the old model is shut down once its last stream is sent
        assert time.monotonic() < deadline, "the old model was not unloaded"
        time.sleep(0.1)


@pytest.mark.slow
def test_cli_serve_two_models_records_and_closes_its_deployments(fresh_registry, tiny) -> None:
    """`llmpress serve --model A --model B` as users run it: both listed, answers, SIGTERM exits 0 and the
    registry's server rows are closed."""
    import os
    import signal
    import subprocess
    import sys

    from llmpress.ops.deployments import deploy, servers

    deploy("builtin:tiny-llama", "cli-a", registry=fresh_registry)  # registers the built-in in this registry
    deploy("cli-a", "cli-b", registry=fresh_registry)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llmpress.cli.main", "serve", "--model", "cli-a", "--model",
                             "cli-b", "--port", str(port), "--no-auth", "--kv-cache-mb", "16", "--log-level",
                             "warning"], env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, 180)
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["cli-a", "cli-b"]
        assert _complete(url, "cli-b").status_code == 200
        assert {r["alias"] for r in servers(fresh_registry)} == {"cli-a", "cli-b"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert servers(fresh_registry) == []  # both rows closed on the way out
