"""Issue 12's findings, each pinned by a test that failed before its fix: one engine loop per process,
faults as 500s and an unhealthy engine that stops taking work, per-request isolation, prefix-cache
collisions, incremental detokenization, streams built from immutable outputs, usage settled on every
exit path, budgets that count requests in flight, bounded request ids, unknown fields, the OpenAPI
document, and one tokenizer per thread."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from live import start_server

from llmpress.engine import EngineConfig, LLMEngine, SamplingParams


@pytest.fixture(scope="module")
def model_tok(tiny):
    return tiny.load_model(), tiny.load_tokenizer()


def _drain(eng: LLMEngine) -> list[Any]:
    outs = []
    while eng.has_work():
        outs += eng.step()
    return outs


# -- one engine loop per process -------------------------------------------------------------
def test_caller_mode_never_starts_a_thread_and_a_second_loop_is_refused(tiny):
    """`llmpress serve`'s mode: the lifespan must not start an engine thread (before the fix it could,
    racing `run_here`, and two loops corrupted the batch); the loop runs only where the owner runs it."""
    import uvicorn

    from llmpress.server import build_app

    app, _ = build_app(tiny, auth=False, kv_cache_mb=8, engine_loop="caller")
    driver = app.state.driver
    from live import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    http = threading.Thread(target=server.run, daemon=True)
    http.start()
    url = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            time.sleep(0.02)
        assert not any(t.name == "llmpress-engine" for t in threading.enumerate())
        r = httpx.get(url + "/ready")
        assert r.status_code == 503 and "engine not running" in r.json()["error"]["message"]
        loop = threading.Thread(target=driver.run_here, name="owner")
        loop.start()
        deadline = time.monotonic() + 10
        while not driver.alive:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match="second engine loop"):
            driver._loop()
        assert httpx.get(url + "/ready").status_code == 200
        r = httpx.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 3,
                                                      "ignore_eos": True}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        assert [t.name for t in threading.enumerate() if t.name == "llmpress-engine"] == []
    finally:
        server.should_exit = True
        http.join(30)
        driver.stop()
        loop.join(30)


# -- faults ----------------------------------------------------------------------------------
def _poison(eng: LLMEngine, bad: set[str]) -> None:
    """Fault injection: the model raises whenever a batch holds one of these request ids."""
    real = eng.runner.run

    def run(items, *a, **k):
        if any(s.request_id in bad or "*" in bad for s, _ in items):
            raise RuntimeError("injected fault")
        return real(items, *a, **k)

    eng.runner.run = run


def test_one_bad_request_fails_alone(model_tok):
    """Before: any error failed every request in the batch. Now the batch is retried one by one."""
    model, tok = model_tok
    eng = LLMEngine(model, tok, EngineConfig())
    _poison(eng, {"bad"})
    good = [eng.add_request([5, 6, 7 + i], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), f"g{i}")
            for i in range(3)]
    bad = eng.add_request([5, 6, 7], SamplingParams(max_tokens=4), "bad")
    _drain(eng)
    assert [g.finish_reason for g in good] == ["length"] * 3
    assert all(g.num_output_tokens == 4 for g in good)
    assert bad.finish_reason == "error" and "injected fault" in bad.error
    assert eng.healthy and eng.faults == 1 and eng.blocks.num_used == 0


def test_engine_fault_is_500_and_repeated_faults_make_it_unhealthy(tiny, caplog):
    srv = start_server(tiny, auth=False, kv_cache_mb=8)
    try:
        body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 2}
        rid = "fault-1"
        _poison(srv.engine, {f"{rid}-0-0"})
        r = httpx.post(srv.url + "/v1/completions", json=body, headers={"x-request-id": rid}, timeout=60)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "injected fault" in r.json()["error"]["message"]
        assert httpx.post(srv.url + "/v1/completions", json=body, timeout=60).status_code == 200  # still healthy
        _poison(srv.engine, {"*"})
        with caplog.at_level(logging.ERROR, logger="llmpress.engine"):
            codes = [httpx.post(srv.url + "/v1/completions", json=body, timeout=60).status_code for _ in range(3)]
        assert codes == [500, 500, 500]
        assert any("engine unhealthy" in rec.getMessage() for rec in caplog.records)
        r = httpx.get(srv.url + "/ready")
        assert r.status_code == 503 and "unhealthy" in r.json()["error"]["message"]
        assert httpx.get(srv.url + "/health").status_code == 503
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        assert "restart" in r.json()["error"]["message"]
    finally:
        srv.stop()


# -- prefix cache ----------------------------------------------------------------------------
def test_prefix_cache_collision_never_serves_foreign_kv(model_tok, monkeypatch):
    """Force every block hash to collide: a hit must still be refused unless the tokens (and parent)
    match. Before the fix a hit was trusted on the hash, so B was served A's KV."""
    from llmpress.engine import block_manager

    model, tok = model_tok
    a = tok.encode("alpha beta gamma delta " * 10)
    b = tok.encode("one two three four five " * 10)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)

    def outputs(prefix: bool) -> list[int]:
        eng = LLMEngine(model, tok, EngineConfig(enable_prefix_caching=prefix, block_size=4))
        eng.add_request(a, params)
        _drain(eng)
        seq = eng.add_request(b, params)
        _drain(eng)
        return seq.output_ids

    ref = outputs(False)
    monkeypatch.setattr(block_manager, "block_hash", lambda prev, tokens: b"\0" * 16)
    assert outputs(True) == ref
    assert len(block_manager.block_hash(b"", [1, 2])) == 16


def test_block_hash_is_strong_and_chained():
    from llmpress.engine.block_manager import ROOT, block_hash

    h1 = block_hash(ROOT, [1, 2, 3])
    assert isinstance(h1, bytes) and len(h1) == 16
    assert block_hash(h1, [4]) != block_hash(block_hash(ROOT, [1, 2, 4]), [4])
    assert h1 == block_hash(ROOT, [1, 2, 3])


# -- detokenization and the stream ---------------------------------------------------------
def test_incremental_detokenizer_matches_full_decode_and_is_linear(model_tok):
    """Same text as decoding everything at once; the tokens decoded per step stay bounded (before: the
    whole output was re-decoded every token to look for stop strings — quadratic)."""
    import random

    from llmpress.engine.detokenizer import IncrementalDetokenizer

    _, tok = model_tok
    calls: list[int] = []

    class Counting:
        def decode(self, ids, **kw):
            calls.append(len(ids))
            return tok.decode(ids, **kw)

    rng = random.Random(0)
    text = "Hello, wörld! ünïcode ✓ naïve café — 🙂 tokens\n" * 6
    ids = tok.encode(text)
    for trial in range(3):
        out = ids if trial == 0 else [rng.randrange(len(tok)) for _ in range(300)]
        d = IncrementalDetokenizer(Counting(), [1, 2, 3], [])
        calls.clear()
        streamed = ""
        for t in out:
            d.add(t)
            streamed += d.take(final=False)
        d.flush()
        streamed += d.take(final=True)
        assert streamed == tok.decode(out, skip_special_tokens=True)
        assert sum(calls) < 20 * len(out)


def test_stop_string_never_leaks_and_last_delta_arrives(tiny):
    """Streams are the concatenation of immutable outputs: every stream equals its non-streaming text,
    a stop string never appears, and the final delta is never dropped (24 concurrent streams)."""
    srv = start_server(tiny, auth=False, kv_cache_mb=16)
    try:
        base = {"model": "tiny-llama", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
        full = httpx.post(srv.url + "/v1/completions", json={**base, "prompt": "stop test"}, timeout=60).json()
        text = full["choices"][0]["text"]
        stop = text[len(text) // 2:len(text) // 2 + 2]
        assert stop

        def one(i: int) -> tuple[str, str, str | None]:
            body = {**base, "prompt": "stop test", "stop": [stop]} if i % 2 else {**base, "prompt": f"p{i}"}
            ref = httpx.post(srv.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]
            got, fin = "", None
            with httpx.stream("POST", srv.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        import json

                        c = json.loads(line[6:])["choices"][0]
                        got += c["text"]
                        fin = c["finish_reason"] or fin
            return got, ref["text"], fin

        with ThreadPoolExecutor(12) as ex:
            res = list(ex.map(one, range(24)))
        for i, (got, ref, fin) in enumerate(res):
            assert got == ref
            assert fin in ("stop", "length")
            if i % 2:
                assert stop not in got and text.startswith(got) and fin == "stop"
    finally:
        srv.stop()


def test_step_outputs_are_immutable(model_tok):
    model, tok = model_tok
    eng = LLMEngine(model, tok, EngineConfig())
    eng.add_request([1, 2, 3], SamplingParams(max_tokens=2, ignore_eos=True))
    out = _drain(eng)[-1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.text = "x"  # type: ignore[misc]
    assert isinstance(out.token_ids, tuple)


def test_engine_detokenizes_with_its_own_tokenizer(model_tok):
    """A Rust tokenizer used from the event loop and the engine thread at once fails ("Already
    borrowed"); the engine keeps a private copy for its thread."""
    model, tok = model_tok
    eng = LLMEngine(model, tok, EngineConfig())
    assert eng.tokenizer is tok
    assert eng._detok_tokenizer is not tok
    assert eng._detok_tokenizer._tokenizer is not tok._tokenizer


# -- accounting ------------------------------------------------------------------------------
@pytest.fixture
def keyed(tiny):
    srv = start_server(tiny, auth=True, kv_cache_mb=16)
    yield srv
    srv.stop()


def test_non_streaming_disconnect_is_charged(keyed):
    """Before: a client that hung up on a non-streaming request was never charged (usage skipped on
    CancelledError). Now the tokens it consumed are recorded and its reservation released."""
    from llmpress.registry.keys import KeyStore

    ks = KeyStore()
    info, secret = ks.create("disconnects", token_budget=10_000)
    body = {"model": "tiny-llama", "prompt": "long one", "max_tokens": 1500, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(keyed.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {secret}"},
                   timeout=httpx.Timeout(60, read=1.5))
    deadline = time.monotonic() + 30
    while not ks.usage(info.id) and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = ks.usage(info.id)
    assert len(rows) == 1 and rows[0].status == 499
    assert 0 < rows[0].tokens_out < 1500
    key = next(k for k in ks.list() if k["id"] == info.id)
    assert key["tokens_used"] == rows[0].tokens_in + rows[0].tokens_out
    assert KeyStore().verify(secret).tokens_reserved == 0
    assert keyed.engine.num_running == 0


def test_budget_counts_requests_in_flight(keyed):
    """8 concurrent requests, each able to use 3 + 20 tokens, against a 100-token budget: at most 4 may
    run. Before the fix all 8 passed the check (each saw tokens_used = 0) and overspent the budget."""
    from llmpress.registry.keys import KeyStore

    ks = KeyStore()
    info, secret = ks.create("budget-race", token_budget=100)
    tok = keyed.engine.tokenizer
    prompt = tok.decode(tok.encode("a b c")[:3])
    n_prompt = len(tok.encode(prompt))
    body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 20, "ignore_eos": True}
    start = threading.Barrier(8)

    def one(_: int) -> int:
        start.wait()
        return httpx.post(keyed.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {secret}"},
                          timeout=60).status_code

    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(one, range(8)))
    ok = codes.count(200)
    assert set(codes) <= {200, 429} and 1 <= ok <= 100 // (n_prompt + 20)
    key = next(k for k in ks.list() if k["id"] == info.id)
    assert key["tokens_used"] == ok * (n_prompt + 20) <= 100
    assert ks.verify(secret).tokens_reserved == 0


def test_expired_reservations_are_reclaimed(fresh_registry):
    from llmpress.registry.keys import KeyStore

    ks = KeyStore(fresh_registry)
    info, secret = ks.create("crashy", token_budget=50)
    assert ks.reserve(info.id, 40, ttl_s=-1) is not None  # a request whose server died
    assert ks.reserve(info.id, 20, ttl_s=60) is None  # 40 held: no room
    assert ks.reclaim_expired() == 1
    res = ks.reserve(info.id, 20, ttl_s=60)
    assert res is not None
    ks.record_usage(info.id, "r", "m", "completions", 5, 5, 1.0, 200, reservation=res)
    ks.record_usage(info.id, "r", "m", "completions", 0, 0, 1.0, 200, reservation=res)  # settling twice is a no-op
    k = ks.verify(secret)
    assert (k.tokens_used, k.tokens_reserved) == (10, 0)


# -- request ids, unknown fields, OpenAPI -----------------------------------------------------
def test_request_ids_bounded_and_validated(keyed):
    h = {"x-request-id": "x" * 65}
    r = httpx.get(keyed.url + "/health", headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-request-id"
    r = httpx.get(keyed.url + "/health", headers={"x-request-id": "bad id\twith spaces"})
    assert r.status_code == 400
    r = httpx.get(keyed.url + "/health", headers={"x-request-id": "trace-123.a:b"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-123.a:b"
    assert len(httpx.get(keyed.url + "/health").headers["x-request-id"]) == 16


def test_unknown_fields_are_named(keyed):
    from llmpress.registry.keys import KeyStore

    _, secret = KeyStore().create("fields")
    h = {"Authorization": f"Bearer {secret}"}
    r = httpx.post(keyed.url + "/v1/completions", json={"model": "tiny-llama", "prompt": "x", "max_token": 5},
                   headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "max_token"
    r = httpx.post(keyed.url + "/v1/chat/completions",
                   json={"model": "tiny-llama", "messages": [{"role": "user", "content": "x", "colour": 1}]},
                   headers=h)
    assert r.status_code == 422 and "messages.0.colour" in r.json()["error"]["message"]
    # OpenAI's own fields are accepted; unsupported values of them are refused clearly
    ok = {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
          "stream_options": None, "store": False, "metadata": {"a": "b"}, "response_format": {"type": "text"}}
    assert httpx.post(keyed.url + "/v1/chat/completions", json=ok, headers=h, timeout=60).status_code == 200
    r = httpx.post(keyed.url + "/v1/chat/completions", json={**ok, "response_format": {"type": "json_object"}},
                   headers=h)
    assert r.status_code == 422 and "not supported" in r.json()["error"]["message"]


def test_stream_options_include_usage(keyed):
    import json

    from llmpress.registry.keys import KeyStore

    info, secret = KeyStore().create("stream-usage")
    body = {"model": "tiny-llama", "prompt": "count", "max_tokens": 5, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    events = []
    with httpx.stream("POST", keyed.url + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {secret}"}, timeout=60) as r:
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5
    deadline = time.monotonic() + 10  # the row is written when the response closes, just after [DONE]
    while not (rows := KeyStore().usage(info.id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rows[-1].tokens_out == 5 and rows[-1].tokens_in == events[-1]["usage"]["prompt_tokens"]


def test_openapi_declares_what_the_server_returns(keyed):
    doc = httpx.get(keyed.url + "/openapi.json").json()
    comp = doc["paths"]["/v1/completions"]["post"]["responses"]
    for code in ("400", "401", "403", "404", "422", "429", "500", "503", "504"):
        assert code in comp, code
        assert comp[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "text/event-stream" in comp["200"]["content"]
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "503" in doc["paths"]["/ready"]["get"]["responses"]
    gen = doc["components"]["schemas"]["GenerateRequest"]
    assert gen.get("additionalProperties") is False
    # and what it returns matches: a non-object JSON body is a declared 400 with the error shape
    r = httpx.post(keyed.url + "/v1/completions", json=[1, 2], headers={"Authorization": "Bearer x"})
    assert str(r.status_code) in comp and set(r.json()["error"]) == {"message", "type", "param", "code"}
