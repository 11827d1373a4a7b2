"""The OpenAI-compatible server, live on loopback (uvicorn in a thread), driven by the official client."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import torch
from live import free_port as _free_port
from live import start_server, wait_ready


@pytest.fixture(scope="module")
def live(tiny):
    srv = start_server(tiny, auth=True, max_batch=32, kv_cache_mb=16, block_size=16, max_tokens_per_step=256)
    yield srv
    srv.server.should_exit = True
    srv.thread.join(30)


@pytest.fixture(scope="module")
def key(live):
    from llmpress.registry.keys import KeyStore

    _, secret = KeyStore().create("tests")
    return secret


@pytest.fixture(scope="module")
def client(live, key):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=key, max_retries=0, timeout=60)


def hf_greedy(tiny_model: Any, ids: list[int], n: int) -> list[int]:
    out = tiny_model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def test_models_and_health(live, client):
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]
    assert httpx.get(live.url + "/health").json() == {"status": "ok"}
    assert httpx.get(live.url + "/ready").status_code == 200


def test_completion_greedy_matches_hf(live, client, tiny):
    tok = live.engine.tokenizer
    prompt = "The capital of France is"
    r = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=12, temperature=0,
                                  logprobs=0)
    ids = tok.encode(prompt)
    ref = hf_greedy(tiny.load_model(), ids, 12)  # transformers' own generate (the engine serves engine/lite.py)
    assert r.choices[0].text == tok.decode(ref, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == len(ref)
    assert r.choices[0].logprobs.tokens == [tok.decode([t]) for t in ref]


def test_echo_logprobs_for_scoring(client, live, tiny):
    tok = live.engine.tokenizer
    prompt = "one two three four five"
    n = len(tok.encode(prompt))
    r = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == prompt
    assert len(lp.tokens) == n and lp.token_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    # the prompt logprob of a token equals the logprob the model gives it when generating it greedily
    r2 = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=1, temperature=0, logprobs=0)
    nxt = r2.choices[0].logprobs
    # score the prompt + that token by ids (text could re-tokenize differently): its last logprob is the same
    greedy_id = hf_greedy(tiny.load_model(), tok.encode(prompt), 1)[0]
    ids = tok.encode(prompt) + [greedy_id]
    r3 = client.completions.create(model="tiny-llama", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    assert len(r3.choices[0].logprobs.tokens) == n + 1
    assert abs(r3.choices[0].logprobs.token_logprobs[-1] - nxt.token_logprobs[0]) < 1e-3


def test_streaming_equals_non_streaming(client):
    kw: dict[str, Any] = dict(model="tiny-llama", prompt="Once upon a time", max_tokens=10, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_chat_and_chat_stream(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    r = client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=8, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 8
    parts = list(client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=8, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True}))
    assert "".join(p.choices[0].delta.content or "" for p in parts) == r.choices[0].message.content
    r2 = client.chat.completions.create(model="tiny-llama", messages=msgs, max_tokens=3, logprobs=True,
                                        top_logprobs=2, temperature=0, extra_body={"ignore_eos": True})
    assert len(r2.choices[0].logprobs.content) == 3
    assert len(r2.choices[0].logprobs.content[0].top_logprobs) == 2


def test_32_parallel_requests_right_lengths(client, live):
    lengths = [1 + (i * 7) % 23 for i in range(32)]

    def one(i: int) -> tuple[int, str]:
        r = client.completions.create(model="tiny-llama", prompt=f"Request number {i}: " + "word " * (i % 9),
                                      max_tokens=lengths[i], temperature=0.8, seed=i, extra_body={"ignore_eos": True})
        return r.usage.completion_tokens, r.choices[0].finish_reason

    with ThreadPoolExecutor(32) as ex:
        got = list(ex.map(one, range(32)))
    assert [g[0] for g in got] == lengths
    assert all(g[1] == "length" for g in got)
    assert live.engine.num_running == 0


def test_prefix_cache_hit_gives_identical_output(client, live):
    prompt = "alpha beta gamma delta epsilon zeta eta theta " * 8  # > 4 blocks of 16 tokens
    before = live.engine.blocks.hits
    a = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=10, temperature=0).choices[0].text
    b = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=10, temperature=0).choices[0].text
    assert live.engine.blocks.hits - before >= 48
    assert a == b
    metrics = httpx.get(live.url + "/metrics").text
    assert "llmpress_prefix_cache_hit_tokens" in metrics and "llmpress_kv_blocks_used" in metrics


def test_generate_contract(live, key, client):
    """/generate: `max_length` new tokens, greedy by default — the same text as a greedy completion."""
    h = {"Authorization": f"Bearer {key}"}
    r = httpx.post(live.url + "/generate", json={"prompt": "Hello", "max_length": 5}, headers=h)
    assert r.status_code == 200
    ref = client.completions.create(model="tiny-llama", prompt="Hello", max_tokens=5, temperature=0)
    assert r.json()["generated_text"] == ref.choices[0].text
    assert ref.usage.completion_tokens == 5 or ref.choices[0].finish_reason == "stop"
    r = httpx.post(live.url + "/generate", json={"prompt": "Hello", "max_tokens": 100000}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "max_tokens"
    assert "unknown field" in r.json()["error"]["message"]


def test_bad_inputs_give_openai_errors(client, live, key):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-llama", prompt="", max_tokens=2)
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.completions.create(model="tiny-llama", prompt="x", max_tokens=100000)
    assert e.value.body["param"] == "max_tokens"
    h = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    r = httpx.post(live.url + "/v1/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(live.url + "/v1/completions", json={"model": "tiny-llama", "prompt": "x", "max_tokens": "many"},
                   headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(live.url + "/v1/chat/completions", json={"model": "tiny-llama", "messages": []}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages"
    # the engine still serves afterwards
    assert client.completions.create(model="tiny-llama", prompt="ok", max_tokens=2).choices[0].text is not None


def test_auth_failures(live):
    from llmpress.registry.keys import KeyStore

    ks = KeyStore()
    body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 1}
    url = live.url + "/v1/completions"
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer lp_0000_nope"}).status_code == 401
    info, secret = ks.create("to-revoke")
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    ks.revoke(info.id)
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    info, secret = ks.create("short-lived", expires_days=1e-6)
    time.sleep(0.2)
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    info, old = ks.create("rotated")
    _, new = ks.rotate(info.id)
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {new}"}).status_code == 200
    info, scoped = ks.create("models-only", scopes=["models"])
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {scoped}"}).status_code == 403


def test_rate_limits_429_with_retry_after(live):
    from llmpress.registry.keys import KeyStore

    ks = KeyStore()
    body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 1}
    url = live.url + "/v1/completions"
    _, secret = ks.create("rpm", requests_per_minute=2)
    h = {"Authorization": f"Bearer {secret}"}
    codes = [httpx.post(url, json=body, headers=h).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = httpx.post(url, json=body, headers=h)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"
    _, secret = ks.create("tpm", tokens_per_minute=20)
    h = {"Authorization": f"Bearer {secret}"}
    assert httpx.post(url, json={**body, "max_tokens": 10}, headers=h).status_code == 200
    assert httpx.post(url, json={**body, "max_tokens": 15}, headers=h).status_code == 429
    info, secret = ks.create("budget", token_budget=8)
    h = {"Authorization": f"Bearer {secret}"}
    assert httpx.post(url, json={**body, "max_tokens": 4}, headers=h).status_code == 200
    r = httpx.post(url, json={**body, "max_tokens": 4}, headers=h)
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    rows = ks.usage(info.id)
    assert len(rows) == 1 and rows[0].status == 200 and rows[0].tokens_in >= 1 and rows[0].latency_ms > 0


def test_client_disconnect_frees_the_slot(live, key):
    eng = live.engine
    body = {"model": "tiny-llama", "prompt": "stream forever", "max_tokens": 1500, "stream": True,
            "ignore_eos": True}

    async def go() -> None:
        async with httpx.AsyncClient(timeout=30) as c:
            async with c.stream("POST", live.url + "/v1/completions", json=body,
                                headers={"Authorization": f"Bearer {key}"}) as r:
                async for _ in r.aiter_lines():
                    break  # first event received: hang up

    out_before = eng.tokens_out
    asyncio.run(go())
    deadline = time.monotonic() + 20
    while (eng.num_running or eng.blocks.num_used) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert eng.num_running == 0
    assert eng.blocks.num_used == 0
    assert eng.tokens_out - out_before < 1500  # aborted, not run to completion


def test_no_auth_refused_off_loopback(tiny):
    from llmpress.errors import ConfigError
    from llmpress.server import build_app

    with pytest.raises(ConfigError, match="without API keys"):
        build_app(tiny, host="0.0.0.0", auth=False)


def test_graceful_shutdown_drains_in_flight(tiny):
    srv = start_server(tiny, auth=False, kv_cache_mb=8)
    result: dict[str, Any] = {}

    def call() -> None:
        r = httpx.post(srv.url + "/v1/completions", timeout=60,
                       json={"model": "tiny-llama", "prompt": "drain me", "max_tokens": 300, "ignore_eos": True})
        result["status"], result["body"] = r.status_code, r.json()

    th = threading.Thread(target=call)
    th.start()
    deadline = time.monotonic() + 20
    while srv.engine.num_running == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.server.should_exit = True  # what SIGTERM does
    th.join(60)
    srv.thread.join(60)
    assert result["status"] == 200
    assert result["body"]["usage"]["completion_tokens"] == 300


def test_n_choices_and_seed(client):
    kw: dict[str, Any] = dict(model="tiny-llama", prompt="Pick a word:", max_tokens=6, temperature=1.0, seed=11,
                              extra_body={"ignore_eos": True})
    a = client.completions.create(n=3, **kw)
    b = client.completions.create(n=3, **kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # seeded: reproducible
    assert len({c.text for c in a.choices}) > 1  # each choice its own seed
    assert a.usage.completion_tokens == 18


def test_bounded_queue_answers_503_with_retry_after(tiny):
    srv = start_server(tiny, auth=False, kv_cache_mb=8, max_batch=1, max_waiting=1)
    body = {"model": "tiny-llama", "prompt": "busy", "max_tokens": 400, "ignore_eos": True}
    results: list[int] = []
    threads = []
    try:
        for _ in range(2):
            th = threading.Thread(target=lambda: results.append(
                httpx.post(srv.url + "/v1/completions", json=body, timeout=120).status_code))
            th.start()
            threads.append(th)
            deadline = time.monotonic() + 20
            while srv.engine.num_running + srv.engine.num_waiting < len(threads) and time.monotonic() < deadline:
                time.sleep(0.005)
        r = httpx.post(srv.url + "/v1/completions", json={**body, "max_tokens": 1}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["error"]["type"] == "overloaded_error"
    finally:
        for th in threads:
            th.join(120)
        srv.server.should_exit = True
        srv.thread.join(60)
    assert results == [200, 200]


def test_llmpress_serve_process_answers_and_stops_on_sigterm(tiny):
    """`llmpress serve` as users run it: its own process, engine loop on the main thread, uvicorn in a
    helper thread; it answers over HTTP, then SIGTERM drains and exits 0, and a busy port is one clear line."""
    import signal
    import subprocess
    import sys

    port = _free_port()
    cmd = [sys.executable, "-m", "llmpress.cli.main", "serve", str(tiny.path), "--port", str(port), "--no-auth",
           "--kv-cache-mb", "16", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, 120)
        name = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": "Hello", "max_tokens": 5,
                                                      "temperature": 0, "ignore_eos": True}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        busy = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # same port, taken
        assert busy.returncode != 0
        assert "could not start" in busy.stderr + busy.stdout and "Traceback" not in busy.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
