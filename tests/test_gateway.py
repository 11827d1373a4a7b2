"""The gateway over two real `llmpress serve` processes on loopback (tiny-llama): one local, one priced and
keyed like a cloud provider. Routing, privacy, spillover, cost, budgets, key rotation, redaction, failover.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

CLOUD_PRICE = (1000.0, 3000.0)  # USD per Mtok: 0.1 cent per input token, 0.3 cent per output token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llmpress(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmpress.cli.main", *args], capture_output=True, text=True,
                          input=stdin, timeout=timeout)


class Proc:
    def __init__(self, cmd: list[str], url: str, ready: str, log: Path) -> None:
        self.cmd, self.url, self.ready, self.log = cmd, url, ready, log
        self._f = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(cmd, stdout=self._f, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.p.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{self.cmd} did not become ready"
            try:
                if httpx.get(self.url + self.ready, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._f.close()


def serve(tiny: Any, tmp: Path, name: str, *extra: str) -> Proc:
    port = _free_port()
    cmd = [sys.executable, "-m", "llmpress.cli.main", "serve", str(tiny.path), "--port", str(port),
           "--kv-cache-mb", "16", "--log-level", "warning", *extra]
    return Proc(cmd, f"http://127.0.0.1:{port}", "/ready", tmp / f"{name}.log")


def upstream_requests(url: str) -> int:
    """Completions + chat requests an llmpress server has answered, from its own /metrics."""
    n = 0.0
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("llmpress_requests_total{") and "/v1/" in line:
            n += float(line.rsplit(" ", 1)[1])
    return int(n)


@pytest.fixture(scope="module")
def env(tiny, tmp_path_factory, llmpress_home):
    """local (no auth, max batch 2) + cloud (auth, priced) + a gateway process in front of both."""
    from cryptography.fernet import Fernet

    from llmpress.registry.keys import KeyStore

    tmp = tmp_path_factory.mktemp("gw")
    os.environ["LLMPRESS_MASTER_KEY"] = Fernet.generate_key().decode()
    local = serve(tiny, tmp, "local", "--no-auth", "--max-batch", "2")
    cloud = serve(tiny, tmp, "cloud")
    store = KeyStore()
    _, provider_key = store.create("cloud-provider-key-1")
    r = llmpress("providers", "set", "cloud", stdin=provider_key + "\n")
    assert r.returncode == 0, r.stderr
    gw_port = _free_port()
    cfg = {
        "metrics_interval_s": 0.1,
        "backoff_s": 0.01,
        "breaker": {"failures": 2, "cooldown_s": 30},
        "targets": [
            {"name": "local", "url": local.url + "/v1", "models": ["tiny-llama"], "local": True, "context": 2048,
             "max_queue": 0, "timeout_s": 180},
            {"name": "cloud", "url": cloud.url + "/v1", "models": ["tiny-llama"], "context": 2048, "timeout_s": 60,
             "price": {"input_per_mtok": CLOUD_PRICE[0], "output_per_mtok": CLOUD_PRICE[1]}, "api_key": "vault"},
            {"name": "cloud-badkey", "url": cloud.url + "/v1", "models": ["tiny-llama"], "api_key": "env:GW_TEST_BAD_KEY",
             "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}},
        ],
        "routes": [
            {"alias": "chat", "targets": ["local", "cloud"], "policy": "local-first"},
            {"alias": "cloud-first", "targets": ["local", "cloud"], "policy": "weighted",
             "weights": {"cloud": 1, "local": 0}},
            {"alias": "cloud-only", "targets": ["cloud"]},
            {"alias": "bad", "targets": ["cloud-badkey"]},
        ],
        "privacy": {"patterns": {"employee_id": "EMP-[0-9]{6}"}},
    }
    cfg_path = tmp / "gateway.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.environ["GW_TEST_BAD_KEY"] = "sk-thisIsAWrongProviderKey0123456789"
    local.wait_ready()
    cloud.wait_ready()
    gw = Proc([sys.executable, "-m", "llmpress.cli.main", "gateway", "--config", str(cfg_path), "--port",
               str(gw_port)], f"http://127.0.0.1:{gw_port}", "/health", tmp / "gateway.log")
    gw.wait_ready()
    _, client_key = store.create("gateway-client")
    state = {"local": local, "cloud": cloud, "gw": gw, "provider_keys": [provider_key], "client_key": client_key,
             "cfg_path": cfg_path, "tmp": tmp}
    yield state
    for p in (gw, local, cloud):
        p.stop()


def post(env: dict, body: dict, key: str | None = None, path: str = "/v1/chat/completions",
         timeout: float = 120) -> httpx.Response:
    return httpx.post(env["gw"].url + path, json=body, timeout=timeout,
                      headers={"Authorization": f"Bearer {key or env['client_key']}"})


def chat(model: str, text: str = "Hello there", max_tokens: int = 4, **kw: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, **kw}


def ledger_row(request_id: str, timeout: float = 15) -> Any:
    """The cost row of one request, waiting briefly for the gateway's after-response write."""
    from llmpress.registry.cost import CostLedger

    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in CostLedger().rows() if r.request_id == request_id]
        if rows or time.monotonic() > deadline:
            assert rows, f"no cost row for request {request_id}"
            return rows[0]
        time.sleep(0.1)


# -- config -----------------------------------------------------------------------------------------
def test_config_errors_name_the_line_and_field(tmp_path):
    from llmpress.errors import ConfigError
    from llmpress.gateway.config import load_config

    p = tmp_path / "g.yaml"
    p.write_text("targets:\n  - name: a\n    url: http://127.0.0.1:1/v1\n    models: [m]\n"
                 "    api_key: sk-live-abcdefghijklmnop\nroutes: []\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:5: targets[0].api_key" in e.value.message
    assert "sk-live" not in e.value.one_line()  # the inline key is never echoed
    p.write_text("targets:\n  - {name: a, url: 'http://x/v1', models: [m]}\nroutes:\n  - alias: c\n    targets: [a, b]\n")
    with pytest.raises(ConfigError, match=r":5: routes\[0\]\.targets\[1\]: unknown target .b."):
        load_config(p)
    p.write_text("targets:\n  - {name: a, url: 'http://x/v1', models: [m]}\nroutes:\n  - alias: c\n"
                 "    targets: [a]\n    policy: fastest-ever\n")
    with pytest.raises(ConfigError, match=r":6: routes\[0\]\.policy"):
        load_config(p)
    r = llmpress("gateway", "--config", str(p))
    assert r.returncode != 0 and "routes[0].policy" in r.stderr and "Traceback" not in r.stderr
    cfg = load_config(Path(__file__).parents[1] / "examples" / "gateway.yaml")
    assert {t.name for t in cfg.targets} == {"local", "cloud"}


def test_detectors():
    from llmpress.gateway.privacy import PrivacyScanner, iban_ok, luhn_ok

    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")
    s = PrivacyScanner(patterns={"emp": "EMP-[0-9]{6}"})
    assert s.scan("write to jane.doe@example.org") == ["email"]
    assert s.scan("call me on +44 20 7946 0958") == ["phone"]
    assert s.scan("card 4111 1111 1111 1111 exp 12/29") == ["card"]
    assert s.scan("card 4111 1111 1111 1112") == []  # fails Luhn
    assert "iban" in s.scan("pay to DE89 3704 0044 0532 0130 00")
    assert s.scan("my key is sk-proj-abcdefghijklmnopqrstuvwxyz012345") == ["secret"]
    assert s.scan("badge EMP-123456") == ["pattern:emp"]
    assert s.scan("The lighthouse keepers of 1850 wrote 12 letters a year.") == []


def test_vault_redaction_and_master_key_mode(tmp_path, monkeypatch, fresh_registry, caplog):
    import logging

    from cryptography.fernet import Fernet

    from llmpress.errors import ConfigError
    from llmpress.gateway.vault import (
        REDACTED,
        RedactingFilter,
        Secret,
        Vault,
        create_master_key,
        load_master_key,
    )

    monkeypatch.delenv("LLMPRESS_MASTER_KEY", raising=False)
    keyfile = tmp_path / "master.key"
    monkeypatch.setenv("LLMPRESS_MASTER_KEY_FILE", str(keyfile))
    create_master_key()
    assert (keyfile.stat().st_mode & 0o777) == 0o600
    keyfile.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others") as e:
        load_master_key()
    assert "chmod 600" in e.value.one_line()
    keyfile.chmod(0o600)
    Fernet(load_master_key())
    secret = "sk-proj-SuperSecretProviderKey000111"
    v = Vault()
    v.set("cloud", secret)
    raw = b"".join(r.ciphertext for r in v.ledger.provider_keys("cloud"))
    assert secret.encode() not in raw  # encrypted at rest
    db = Path(fresh_registry.url.removeprefix("sqlite:///")).read_bytes()
    assert secret.encode() not in db
    assert [k.reveal() for k in v.keys("cloud")] == [secret]
    assert secret not in repr(v.keys("cloud")) and secret not in f"{v.keys('cloud')[0]}"
    assert REDACTED in repr(Secret(secret))
    lg = logging.getLogger("llmpress.gateway.test")
    lg.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="llmpress.gateway.test"):
        lg.info("upstream said: bad key %s", secret, extra={"error": f"Authorization: Bearer {secret}"})
    assert secret not in caplog.text and REDACTED in caplog.text
    assert secret not in caplog.records[0].error


def test_policies_breaker_and_capacity_rules():
    from llmpress.gateway.config import BreakerConfig, RouteConfig, TargetConfig
    from llmpress.gateway.routing import POLICIES, Breaker, SensitiveDataError, TargetState, plan

    def st(name: str, local: bool, pin: float, **kw: Any) -> TargetState:
        cfg = TargetConfig(name=name, url="http://127.0.0.1:1/v1", models=["m"], local=local,
                           price={"input_per_mtok": pin, "output_per_mtok": pin}, **kw)
        return TargetState(cfg, Breaker(BreakerConfig(failures=2, cooldown_s=60)))

    states = {"a": st("a", False, 5.0), "b": st("b", True, 0.0, max_queue=1, context=100), "c": st("c", False, 1.0)}
    route = RouteConfig(alias="r", targets=["a", "b", "c"])
    assert set(POLICIES) == {"local-first", "cheapest", "fastest", "weighted"}
    assert [t.name for t in plan(route, states, [], 10).targets] == ["b", "a", "c"]
    cheap = route.model_copy(update={"policy": "cheapest"})
    assert [t.name for t in plan(cheap, states, [], 10).targets] == ["b", "c", "a"]
    states["a"].ewma_ttft_s, states["b"].ewma_ttft_s, states["c"].ewma_ttft_s = 0.05, 0.2, 0.1
    fast = route.model_copy(update={"policy": "fastest"})
    assert [t.name for t in plan(fast, states, [], 10).targets] == ["a", "c", "b"]
    w = RouteConfig(alias="w", targets=["a", "b", "c"], policy="weighted", weights={"a": 1, "b": 0, "c": 0})
    assert all(plan(w, states, [], 10).targets[0].name == "a" for _ in range(20))
    # capacity: b's queue above max_queue -> it goes behind the others (spillover)
    states["b"].update_from_metrics("llmpress_queue_depth 3.0\nllmpress_kv_blocks_used 1\nllmpress_kv_blocks_total 4\n")
    assert states["b"].saturated() and states["b"].kv_usage == 0.25
    assert [t.name for t in plan(route, states, [], 10).targets] == ["a", "c", "b"]
    # context: b holds 100 tokens; a 500-token request skips it
    assert "b" not in [t.name for t in plan(route, states, [], 500).targets]
    # privacy: only local targets; none fits -> refused before any call
    assert [t.name for t in plan(route, states, ["email"], 10).targets] == ["b"]
    with pytest.raises(SensitiveDataError, match="email"):
        plan(RouteConfig(alias="x", targets=["a", "c"]), states, ["email"], 10)
    # breaker: opens after 2 consecutive failures, the target drops out of plans
    states["a"].breaker.failure()
    assert states["a"].breaker.state == "closed"
    states["a"].breaker.failure()
    assert states["a"].breaker.state == "open" and not states["a"].breaker.allow()
    assert "a" not in [t.name for t in plan(route, states, [], 10).targets]
    # vLLM's metric names are read too
    states["c"].update_from_metrics('vllm:num_requests_waiting{model_name="m"} 7.0\nvllm:kv_cache_usage_perc{model_name="m"} 0.5\n')
    assert states["c"].queue == 7.0 and states["c"].kv_usage == 0.5


def test_token_counter_uses_the_tokenizer_or_states_its_approximation(tiny):
    from transformers import AutoTokenizer

    from llmpress.gateway.pricing import TokenCounter

    text = "The lighthouse keeper counted the ships, one by one, until dawn."
    tok = AutoTokenizer.from_pretrained(str(tiny.path))
    exact = TokenCounter(str(tiny.path))
    assert exact.count(text) == len(tok.encode(text, add_special_tokens=False))
    approx = TokenCounter(None)
    assert approx.count(text) == -(-len(text) // 4) and approx.method == "approx:chars/4"


# -- live: routing, privacy, capacity ---------------------------------------------------------------
def test_models_route_and_target_header(env):
    r = httpx.get(env["gw"].url + "/v1/models", headers={"Authorization": f"Bearer {env['client_key']}"})
    assert {"chat", "cloud-first", "cloud-only", "tiny-llama"} <= {m["id"] for m in r.json()["data"]}
    assert httpx.get(env["gw"].url + "/v1/models").status_code == 401
    r = post(env, chat("chat"))
    assert r.status_code == 200, r.text
    assert r.headers["x-llmpress-target"] == "local" and r.json()["usage"]["completion_tokens"] == 4
    r = post(env, chat("cloud-first"))
    assert r.status_code == 200 and r.headers["x-llmpress-target"] == "cloud"
    r = post(env, chat("nope"))
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = post(env, {"model": "chat", "messages": []})
    assert r.status_code == 422 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_sensitive_data_never_leaves_local(env):
    before = upstream_requests(env["cloud"].url)
    texts = ["my email is jane@example.com", "card 4111-1111-1111-1111 please", "EMP-123456 salary",
             "IBAN DE89 3704 0044 0532 0130 00", "token = ghp_abcdefghijklmnopqrstuvwxyz0123456789"]
    for t in texts:
        r = post(env, chat("cloud-first", t))  # the policy puts cloud first; privacy overrides it
        assert r.status_code == 200, r.text
        assert r.headers["x-llmpress-target"] == "local"
        r = post(env, chat("cloud-only", t))
        assert r.status_code == 422 and "sensitive data" in r.json()["error"]["message"]
        assert "jane@" not in r.text and "4111" not in r.text  # the refusal names detectors, not the data
    assert upstream_requests(env["cloud"].url) == before  # zero sensitive requests reached the cloud
    r = post(env, chat("cloud-first", "plain question about lighthouses"))
    assert r.headers["x-llmpress-target"] == "cloud"


def test_spillover_when_local_queue_fills(env):
    """local: max batch 2, max_queue 0. A burst of 8 overflows its queue and the rest spill to cloud."""
    def one(i: int) -> str:
        r = post(env, chat("chat", f"story number {i}", max_tokens=16))
        assert r.status_code == 200, r.text
        return r.headers["x-llmpress-target"]

    with ThreadPoolExecutor(8) as ex:
        served = list(ex.map(one, range(8)))
    assert served.count("local") >= 1 and served.count("cloud") >= 1, served
    time.sleep(0.5)
    r = post(env, chat("chat"))  # once the queue is empty again, local takes it
    assert r.headers["x-llmpress-target"] == "local"


# -- live: cost and budgets --------------------------------------------------------------------------
def test_cost_recorded_equals_usage_times_price(env):
    expected = Decimal(0)
    ids = []
    for i in range(6):
        r = post(env, chat("cloud-only", "count the waves " * (i + 1), max_tokens=3 + i))
        assert r.status_code == 200
        u = r.json()["usage"]
        expected += (Decimal(u["prompt_tokens"]) * Decimal(str(CLOUD_PRICE[0]))
                     + Decimal(u["completion_tokens"]) * Decimal(str(CLOUD_PRICE[1]))) / Decimal(10**6)
        ids.append(r.headers["x-request-id"])
    rows = [ledger_row(i) for i in ids]
    assert len(rows) == 6 and all(r.target == "cloud" and r.usage_source == "upstream" for r in rows)
    recorded = Decimal(sum(r.cost_nusd for r in rows)) / Decimal(10**9)
    assert recorded.quantize(Decimal("0.01")) == expected.quantize(Decimal("0.01"))
    assert recorded == expected  # in fact exact: integer nano-USD
    r = llmpress("cost", "report", "--by", "target", "--json", "--out", str(env["tmp"] / "report"))
    assert r.returncode == 0, r.stderr
    by = {row["target"]: row for row in json.loads(r.stdout)["rows"]}
    assert Decimal(str(by["cloud"]["cost_usd"])) >= recorded
    assert (env["tmp"] / "report" / "cost_by_target.csv").is_file()
    assert (env["tmp"] / "report" / "cost_by_target.png").is_file()
    total = json.loads(r.stdout)["total_usd"]
    r = llmpress("cost", "report", "--by", "key", "--json", "--out", str(env["tmp"] / "report"))
    by_key = json.loads(r.stdout)
    assert by_key["total_usd"] == total  # the same ledger, grouped another way
    from llmpress.registry.keys import KeyStore

    client_id = KeyStore().verify(env["client_key"]).id
    assert any(row["key"] == client_id and row["cost_usd"] >= float(recorded) for row in by_key["rows"])


def test_request_id_echoed_and_an_invalid_one_refused_before_forwarding(env):
    h = {"Authorization": f"Bearer {env['client_key']}"}
    r = httpx.post(env["gw"].url + "/v1/chat/completions", json=chat("chat"), timeout=120,
                   headers={**h, "x-request-id": "client-req.42:a"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-req.42:a"
    assert ledger_row("client-req.42:a").status == 200
    r = httpx.post(env["gw"].url + "/v1/chat/completions", json=chat("chat"), timeout=120,
                   headers={**h, "x-request-id": "no spaces allowed"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-request-id"


def test_cost_writer_groups_concurrent_rows_and_isolates_a_bad_one(fresh_registry):
    """Rows settled together share transactions; a row the database refuses fails alone."""
    import asyncio

    from llmpress.gateway.app import CostWriter
    from llmpress.registry.cost import CostLedger, RequestCostRow

    class CountingLedger(CostLedger):
        transactions = 0

        def record_many(self, rows):
            type(self).transactions += 1
            return super().record_many(rows)

    ledger = CountingLedger()
    writer = CostWriter(ledger)

    def row(i: int, route: str | None = "r") -> RequestCostRow:
        return RequestCostRow(request_id=f"req-{i}", key_id=None, route=route, target="t", model="m", tokens_in=i,
                              tokens_out=1, cost_nusd=10 * i, status=200)

    async def write_all(rows: list[RequestCostRow]) -> list:
        return await asyncio.gather(*(writer.write(r) for r in rows), return_exceptions=True)

    assert asyncio.run(write_all([row(i) for i in range(40)])) == [None] * 40
    assert CountingLedger.transactions < 40  # grouped: not one transaction per row
    results = asyncio.run(write_all([row(40), row(99, route=None), row(41)]))  # NOT NULL route: refused
    assert results[0] is None and isinstance(results[1], Exception) and results[2] is None
    stored = {r.request_id: r.cost_nusd for r in ledger.rows()}
    assert stored == {f"req-{i}": 10 * i for i in range(42)}


def test_started_gateway_freezes_its_startup_heap_out_of_gc(fresh_registry):
    """A full GC walked ~470k start-up objects (~240 ms, every thread stopped): the TTFT tail at 32 streams.
    Once started, the gateway has frozen them; objects created later are still collected."""
    import gc
    import weakref

    from fastapi.testclient import TestClient

    from llmpress.gateway import create_gateway_app
    from llmpress.gateway.config import GatewayConfig

    config = GatewayConfig.model_validate({"targets": [{"name": "a", "url": "http://127.0.0.1:9/v1", "models": ["m"],
                                                        "local": True}]})
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        with TestClient(create_gateway_app(config, auth=False)) as client:
            assert client.get("/health").status_code == 200
            assert gc.get_freeze_count() > 10_000
            class Node:
                pass

            node = Node()
            node.self = node  # a reference cycle made after start-up
            ref = weakref.ref(node)
            del node
            gc.collect()
            assert ref() is None  # still collected
    finally:
        gc.unfreeze()


def test_money_budget_refuses_and_counts_in_flight(env):
    from llmpress.registry.cost import CostLedger
    from llmpress.registry.keys import KeyStore

    info, key = KeyStore().create("budgeted")
    CostLedger().set_budget(info.id, 0.20)  # 20 cents: ~60 output tokens at the cloud price
    r = post(env, chat("cloud-only", "hi", max_tokens=100), key=key)
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_quota"
    assert "budget" in r.json()["error"]["message"]
    r = post(env, chat("cloud-only", "hi", max_tokens=20), key=key)  # fits: served and charged
    assert r.status_code == 200
    u = r.json()["usage"]
    charged = u["prompt_tokens"] * 1_000_000 + u["completion_tokens"] * 3_000_000
    ledger_row(r.headers["x-request-id"])
    assert CostLedger().budget(info.id).spent_nusd == charged
    # a long stream holds its worst case (1000 output tokens: ~$3.01) while in flight: of the $4 budget
    # ~$0.99 is left, so a request that may cost $1.21 is refused until the stream ends
    info, key = KeyStore().create("streamer")
    CostLedger().set_budget(info.id, 4.0)
    body = chat("cloud-only", "Tell me a long story", max_tokens=1000, stream=True)
    with httpx.stream("POST", env["gw"].url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as s:
        assert s.status_code == 200
        rid = s.headers["x-request-id"]
        it = s.iter_lines()
        next(it)
        h = httpx.get(env["gw"].url + "/health").json()
        assert h["targets"]["cloud"]["inflight"] >= 1, (h, list(it)[-3:])  # still streaming
        r2 = post(env, chat("cloud-only", "hi", max_tokens=400), key=key)
        assert r2.status_code == 402 and "in flight" in r2.json()["error"]["message"], r2.text
    # the client walked away mid-stream: its row is still written (status 499) and the reservation released
    row = ledger_row(rid)
    assert row.status == 499 and row.tokens_out < 1000
    assert CostLedger().budget(info.id).spent_nusd == row.cost_nusd > 0  # charged for what it used
    r3 = post(env, chat("cloud-only", "hi", max_tokens=5), key=key)
    assert r3.status_code == 200, r3.text


def test_stream_passthrough_records_usage_and_disconnects_settle(env):

    body = chat("chat", "Tell me", max_tokens=6, stream=True)
    with httpx.stream("POST", env["gw"].url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {env['client_key']}"}) as s:
        assert s.status_code == 200 and s.headers["x-llmpress-target"] == "local"
        rid = s.headers["x-request-id"]
        lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert not any('"usage"' in ln and '"choices": []' in ln for ln in lines)  # not asked for: not passed on
    text = "".join(json.loads(ln[6:])["choices"][0]["delta"].get("content", "") for ln in lines[:-1])
    row = ledger_row(rid)
    assert row.stream == 1 and row.target == "local" and row.status == 200
    # llmpress serve answers stream_options.include_usage: the ledger takes the upstream's exact count
    assert row.usage_source == "upstream" and 1 <= row.tokens_out <= 6 and text


def test_client_gone_before_the_relay_starts_is_settled_and_released(env):
    """A client that hangs up while the gateway waits for the upstream's response head: Starlette then cancels
    the streaming response before it iterates the relay, whose own `finally` never runs. The attempt's
    in-flight count, the upstream connection and the cost row (status 499) are still closed out.
    Driven through ASGI (the real app in this process, the real upstream server): a socket cannot time its
    hang-up into that window, an ASGI `receive` / `send` pair can (the disconnect is already queued, and
    sending the response head waits, as on a transport under flow control)."""
    import asyncio

    from fastapi.testclient import TestClient

    from llmpress.gateway import create_gateway_app
    from llmpress.gateway.config import GatewayConfig

    config = GatewayConfig.model_validate({
        "targets": [{"name": "local", "url": env["local"].url + "/v1", "models": ["tiny-llama"], "local": True}],
        "routes": [{"alias": "chat", "targets": ["local"]}]})
    app = create_gateway_app(config, auth=False)
    body = json.dumps(chat("chat", "Tell me a long story", max_tokens=64, stream=True)).encode()
    rid = f"gone-before-relay-{time.time_ns()}"

    async def drive() -> list[dict]:
        sent: list[dict] = []
        events = [{"type": "http.request", "body": body, "more_body": False}, {"type": "http.disconnect"}]

        async def receive() -> dict:
            return events.pop(0) if events else await asyncio.sleep(3600)

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "http.response.start":  # a transport that makes the head wait (flow control)
                await asyncio.sleep(0.05)

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
                 "headers": [(b"content-type", b"application/json"), (b"x-request-id", rid.encode()),
                             (b"content-length", str(len(body)).encode())]}
        await app(scope, receive, send)
        return sent

    with TestClient(app) as client:
        sent = client.portal.call(drive)
        assert not any(m.get("body") for m in sent)  # the relay never ran: nothing of the answer was sent
        row = ledger_row(rid)
        assert row.status == 499 and row.target == "local" and row.stream == 1
        assert app.state.gateway.states["local"].inflight == 0


# -- live: keys ------------------------------------------------------------------------------------
def test_provider_key_rotation_without_restart(env):
    from llmpress.registry.keys import KeyStore

    store = KeyStore()
    old = env["provider_keys"][0]
    _, new = store.create("cloud-provider-key-2")
    r = llmpress("providers", "rotate", "cloud", "--grace", "600", stdin=new + "\n")
    assert r.returncode == 0, r.stderr
    assert new not in r.stdout + r.stderr
    time.sleep(1.2)  # the gateway re-reads the vault at most once a second
    store.revoke(old.split("_")[1])  # the provider retires the old key: the gateway already uses the new one
    r = post(env, chat("cloud-only"))
    assert r.status_code == 200 and r.headers["x-llmpress-target"] == "cloud", r.text
    # rotate to a key the provider does not accept yet: the previous key still works during the grace period
    _, newer = store.create("cloud-provider-key-3")
    r = llmpress("providers", "rotate", "cloud", "--grace", "600", stdin=newer + "\n")
    assert r.returncode == 0, r.stderr
    store.revoke(newer.split("_")[1])
    time.sleep(1.2)
    r = post(env, chat("cloud-only"))
    assert r.status_code == 200, r.text
    listing = llmpress("providers", "list", "--json")
    assert listing.returncode == 0
    statuses = [k["status"] for k in json.loads(listing.stdout) if k["target"] == "cloud"]
    assert statuses.count("current") == 1 and statuses.count("grace") == 2
    for s in (old, new, newer):
        assert s not in listing.stdout
    env["provider_keys"] += [new, newer]


def test_keys_never_in_logs_or_errors(env):
    r = post(env, chat("bad"))  # the upstream rejects this target's key
    assert r.status_code == 401 and r.headers["x-llmpress-target"] == "cloud-badkey"
    bad = os.environ["GW_TEST_BAD_KEY"]
    assert bad not in r.text
    health = httpx.get(env["gw"].url + "/health").text + httpx.get(env["gw"].url + "/metrics").text
    log = env["gw"].log.read_text()
    assert '"msg": "request"' in log  # the log is being written
    for secret in [bad, *env["provider_keys"]]:
        assert secret not in log and secret not in health


# -- live: failure ---------------------------------------------------------------------------------
def test_failover_when_a_target_is_killed(env):
    """Kill the cloud mid-run: no request is lost (each is served by local or gets a clear error); a stream
    cut mid-way ends with one SSE error event; the breaker then keeps requests away from the dead target."""
    def one(i: int, max_tokens: int = 4) -> tuple[int, str | None, dict]:
        r = post(env, chat("cloud-first", f"during the crash {i}", max_tokens=max_tokens))
        return r.status_code, r.headers.get("x-llmpress-target"), r.json()

    body = chat("cloud-first", "A long story", max_tokens=400, stream=True)
    events: list[str] = []
    with ThreadPoolExecutor(6) as ex:
        with httpx.stream("POST", env["gw"].url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {env['client_key']}"}) as s:
            assert s.headers["x-llmpress-target"] == "cloud"
            for ln in s.iter_lines():
                if ln.startswith("data: "):
                    events.append(ln)
                if len(events) == 2:
                    during = [ex.submit(one, i, 24) for i in range(6)]  # in flight at the cloud when it dies
                    time.sleep(0.3)
                    env["cloud"].p.kill()
        results = [f.result() for f in during]
    assert "upstream_stream_failed" in events[-1] and events[-1].startswith('data: {"error"')
    for status, target, data in results:  # none lost: served (by whichever target) or one clear error
        assert (status == 200 and target in ("cloud", "local")) or set(data["error"]) == {"message", "type", "param",
                                                                                       "code"}, (status, data)
    assert sum(1 for s_, t, _ in results if s_ == 200) >= 1, results

    with ThreadPoolExecutor(4) as ex:
        after = list(ex.map(one, range(8)))
    assert [(s_, t) for s_, t, _ in after] == [(200, "local")] * 8
    h = httpx.get(env["gw"].url + "/health").json()
    assert h["targets"]["cloud"]["breaker"] in ("open", "half-open")
