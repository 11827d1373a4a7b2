"""Soak and fault benchmark: `llmpress serve` under 64 mixed clients for 10 minutes, then kill -9.

Phase 1 (soak): 64 concurrent clients on loopback, mixed streaming / non-streaming, prompt and output
lengths, some hanging up early, against `llmpress serve` (API keys on) on the int8-weight-only
SmolLM2 artifact. Per minute: requests sent / answered / refused (429/503, each checked for a
Retry-After header) / failed, TTFT p50/p99 (streams), server RSS. At the end the registry's usage
rows are compared with what the clients were told (`usage` in every answer; streams ask for it with
`stream_options.include_usage`): target zero failed or lost requests, RSS flat within 5 % after the
first minute, usage exact.

Phase 2 (fault): load again, `kill -9` the server mid-load, then `PRAGMA integrity_check` on the
registry, count the usage rows against the requests that had completed, restart the server on the
same registry and check that the key still works and its tokens_used equals the sum of its usage.

Writes `benchmarks/results/soak.json` and `soak.md` (+ `soak.png`). `--quick` runs tiny-llama for 40 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
from _live import free_port, launch, pct  # noqa: E402

RESULTS = Path(__file__).parent / "results"
WORDS = ("the lighthouse keeper wrote every night about ships storms lamps oil and the long winter "
         "on the northern coast where the sea was grey and the rocks were sharp").split()


def cli(*args: str, env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, "-m", "llmpress.cli.main", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"llmpress {' '.join(args)} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def start_server(model: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    return launch(["serve", model, "--port", str(port), "--max-batch", "32", "--log-level", "warning"], port,
                  log=log, env=env, timeout=600)


class Stats:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.rows: list[dict[str, Any]] = []  # one per request
        self.client_usage = {"prompt": 0, "completion": 0}  # what answered requests were told

    def add(self, **row: Any) -> None:
        row["minute"] = int((time.monotonic() - self.t0) // 60)
        self.rows.append(row)


async def one_request(c: httpx.AsyncClient, url: str, model: str, rng: random.Random, stats: Stats,
                      completed: list[int]) -> None:
    stream = rng.random() < 0.5
    hangup = rng.random() < 0.08  # ~8 % of clients disconnect early
    n_words = rng.choice((4, 16, 48, 120))
    max_tokens = rng.choice((8, 32, 64, 128))
    body: dict[str, Any] = {"model": model, "prompt": " ".join(rng.choice(WORDS) for _ in range(n_words)),
                            "max_tokens": max_tokens, "temperature": rng.choice((0, 0.8)), "ignore_eos": True}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    t = time.monotonic()
    kind = "stream" if stream else "json"
    try:
        if stream:
            ttft = None
            usage = None
            async with c.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    return record_status(stats, r, kind)
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    ev = json.loads(line[6:])
                    if "error" in ev:
                        stats.add(kind=kind, outcome="failed", detail=ev["error"]["message"][:120])
                        return
                    if ev.get("choices") and ttft is None:
                        ttft = time.monotonic() - t
                    if ev.get("usage"):
                        usage = ev["usage"]
                    if hangup and ttft is not None:
                        stats.add(kind=kind, outcome="hung_up", ttft=ttft)
                        return
            if usage is None:
                stats.add(kind=kind, outcome="failed", detail="stream ended without usage")
                return
        else:
            try:
                r = await c.post(url, json=body, timeout=httpx.Timeout(30, read=0.3) if hangup else httpx.USE_CLIENT_DEFAULT)
            except httpx.ReadTimeout:
                if not hangup:
                    raise
                stats.add(kind=kind, outcome="hung_up")
                return
            if r.status_code != 200:
                return record_status(stats, r, kind)
            usage = r.json()["usage"]
            ttft = None
        if usage["completion_tokens"] != max_tokens:
            stats.add(kind=kind, outcome="failed", detail=f"{usage['completion_tokens']} of {max_tokens} tokens")
            return
        stats.client_usage["prompt"] += usage["prompt_tokens"]
        stats.client_usage["completion"] += usage["completion_tokens"]
        completed[0] += 1
        stats.add(kind=kind, outcome="answered", ttft=ttft, latency=time.monotonic() - t)
    except (httpx.HTTPError, OSError) as e:
        stats.add(kind=kind, outcome="error", detail=f"{e.__class__.__name__}: {e}"[:120])


def record_status(stats: Stats, r: httpx.Response, kind: str) -> None:
    if r.status_code in (429, 503):
        stats.add(kind=kind, outcome="refused", status=r.status_code, retry_after="retry-after" in r.headers)
    else:
        stats.add(kind=kind, outcome="failed", status=r.status_code, detail=r.text[:120])


async def load(url: str, model: str, key: str, clients: int, seconds: float, stats: Stats, seed: int,
               completed: list[int], stop: asyncio.Event | None = None) -> None:
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300), limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        async def worker(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                await one_request(c, url + "/v1/completions", model, rng, stats, completed)
                await asyncio.sleep(rng.random() * 0.2)

        await asyncio.gather(*(worker(i) for i in range(clients)))


async def sample_rss(pid: int, t0: float, out: list[tuple[float, float]], stop: asyncio.Event) -> None:
    import psutil

    p = psutil.Process(pid)
    while not stop.is_set():
        try:
            out.append((time.monotonic() - t0, p.memory_info().rss / 2**20))
        except psutil.Error:
            return
        await asyncio.sleep(5)


def registry_usage(db: Path, key_id: str) -> dict[str, Any]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT status, COUNT(*), SUM(tokens_in), SUM(tokens_out) FROM usage WHERE key_id = ? "
                           "GROUP BY status", (key_id,)).fetchall()
        used, reserved = con.execute("SELECT tokens_used, tokens_reserved FROM api_keys WHERE id = ?",
                                     (key_id,)).fetchone()
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()
    return {"by_status": {str(s): {"requests": n, "tokens_in": ti or 0, "tokens_out": to or 0} for s, n, ti, to in rows},
            "tokens_used": used, "tokens_reserved": reserved, "integrity_check": integrity}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="MODEL to serve (default: int8-weight-only SmolLM2, made once)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--fault-seconds", type=float, default=60.0, help="load before the kill -9")
    ap.add_argument("--quick", action="store_true", help="tiny-llama, 40 s soak, 15 s before the kill")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    if a.quick:
        a.minutes, a.fault_seconds, a.model = 40 / 60, 15.0, a.model or "builtin:tiny-llama"
    from llmpress.hardware import benchmark_record

    home = Path(tempfile.mkdtemp(prefix="llmpress-soak-"))
    shared_models = Path(os.environ.get("LLMPRESS_HOME", Path.home() / ".llmpress")) / "models"
    if shared_models.exists():
        (home / "models").symlink_to(shared_models, target_is_directory=True)
    env = {**os.environ, "LLMPRESS_HOME": str(home)}
    env.pop("LLMPRESS_DATABASE_URL", None)  # the registry is this run's own SQLite file
    model = a.model
    if model is None:
        print("quantizing builtin:smollm2-135m to int8-weight-only (once) ...", flush=True)
        made = json.loads(cli("quantize", "builtin:smollm2-135m", "--scheme", "int8-weight-only", "--no-eval",
                              "--json", env=env))
        model = made["id"]
    # a (large) token budget, so every request takes the reservation path
    key = json.loads(cli("keys", "create", "soak", "--budget", "1000000000", "--json", env=env))
    served_name = None
    log = home / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    # -- phase 1: soak -------------------------------------------------------------------
    proc = start_server(model, port, env, log)
    served_name = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key['secret']}"}).json()["data"][0]["id"]
    print(f"soak: {a.clients} clients for {a.minutes:g} min against {served_name} (pid {proc.pid})", flush=True)
    t0 = time.monotonic()
    stats = Stats(t0)
    rss: list[tuple[float, float]] = []
    completed = [0]

    async def phase1() -> None:
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(proc.pid, t0, rss, stop))
        await load(url, served_name, key["secret"], a.clients, a.minutes * 60, stats, 1, completed)
        stop.set()
        await sampler

    asyncio.run(phase1())
    time.sleep(1.0)
    reg = registry_usage(home / "registry.db", key["id"])
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)

    minutes = sorted({r["minute"] for r in stats.rows})
    per_minute = []
    for m in minutes:
        rows = [r for r in stats.rows if r["minute"] == m]
        ttfts = [r["ttft"] for r in rows if r.get("ttft") is not None and r["outcome"] == "answered"]
        mem = [v for t, v in rss if int(t // 60) == m]
        per_minute.append({"minute": m, "sent": len(rows),
                           **{k: sum(1 for r in rows if r["outcome"] == k)
                              for k in ("answered", "refused", "failed", "error", "hung_up")},
                           "ttft_p50_ms": None if not ttfts else 1000 * pct(ttfts, 50),
                           "ttft_p99_ms": None if not ttfts else 1000 * pct(ttfts, 99),
                           "rss_mb": None if not mem else statistics.mean(mem)})
    ok = reg["by_status"].get("200", {"requests": 0, "tokens_in": 0, "tokens_out": 0})
    answered = sum(1 for r in stats.rows if r["outcome"] == "answered")
    settled = sum(v["tokens_in"] + v["tokens_out"] for v in reg["by_status"].values())
    after_first = [v for t, v in rss if t >= 60] or [v for _, v in rss]
    soak = {
        "sent": len(stats.rows), "answered": answered,
        "refused": sum(1 for r in stats.rows if r["outcome"] == "refused"),
        "refused_without_retry_after": sum(1 for r in stats.rows if r["outcome"] == "refused"
                                           and not r.get("retry_after")),
        "failed": sum(1 for r in stats.rows if r["outcome"] in ("failed", "error")),
        "hung_up": sum(1 for r in stats.rows if r["outcome"] == "hung_up"),
        "failures": [r for r in stats.rows if r["outcome"] in ("failed", "error")][:10],
        "usage_registry_200": ok, "usage_clients": stats.client_usage,
        "usage_exact": ok["requests"] == answered and ok["tokens_in"] == stats.client_usage["prompt"]
        and ok["tokens_out"] == stats.client_usage["completion"],
        "registry_by_status": reg["by_status"], "key_tokens_used": reg["tokens_used"],
        "key_tokens_used_equals_usage_rows": reg["tokens_used"] == settled,
        "key_tokens_reserved_after": reg["tokens_reserved"],
        "rss_mb_min_max_after_first_minute": [min(after_first), max(after_first)] if after_first else None,
        "rss_drift_pct": None if not after_first else 100 * (max(after_first) - min(after_first)) / min(after_first),
        "per_minute": per_minute,
    }
    print(json.dumps({k: v for k, v in soak.items() if k != "per_minute"}, indent=1, default=str), flush=True)

    # -- phase 2: kill -9 mid-load, restart ---------------------------------------------------
    proc = start_server(model, port, env, log)
    stats2 = Stats(time.monotonic())
    completed2 = [0]

    async def phase2() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load(url, served_name, key["secret"], a.clients, 3600, stats2, 2, completed2, stop))
        await asyncio.sleep(a.fault_seconds)
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.sleep(1.0)
        stop.set()
        await task

    asyncio.run(phase2())
    proc.wait(30)
    after_kill = registry_usage(home / "registry.db", key["id"])
    rows_200 = after_kill["by_status"].get("200", {"requests": 0})["requests"]
    proc = start_server(model, port, env, log)
    r = httpx.post(url + "/v1/completions", json={"model": served_name, "prompt": "after the crash", "max_tokens": 4,
                                                  "ignore_eos": True},
                   headers={"Authorization": f"Bearer {key['secret']}"}, timeout=120)
    time.sleep(0.5)
    restarted = registry_usage(home / "registry.db", key["id"])
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
    settled_after = sum(v["tokens_in"] + v["tokens_out"] for v in restarted["by_status"].values())
    fault = {
        "completed_before_kill": answered + completed2[0],
        "usage_rows_200_after_kill": rows_200,
        "integrity_check": after_kill["integrity_check"],
        "usage_rows_cover_completed": rows_200 >= answered + completed2[0],
        "key_works_after_restart": r.status_code == 200,
        "tokens_reserved_after_kill": after_kill["tokens_reserved"],  # held by requests the kill cut off
        "reservation_ttl_note": "released by the next server start once older than request timeout + 60 s",
        "tokens_reserved_after_restart": restarted["tokens_reserved"],
        "tokens_used_equals_usage_rows_after_restart": restarted["tokens_used"] == settled_after,
        "client_errors_at_kill": sum(1 for x in stats2.rows if x["outcome"] == "error"),
    }
    print(json.dumps(fault, indent=1), flush=True)

    result = {**benchmark_record(sys.argv), "model": model, "served_name": served_name, "clients": a.clients,
              "minutes": a.minutes, "quick": a.quick, "soak": soak, "fault": fault}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "soak_quick" if a.quick else "soak"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    write_markdown(out / f"{stem}.md", result)
    plot(out / f"{stem}.png", per_minute, rss)
    print(f"wrote {out / stem}.json/.md/.png")


def write_markdown(path: Path, r: dict[str, Any]) -> None:
    from llmpress.hardware import machine_summary

    s, f, m = r["soak"], r["fault"], r["machine"]
    lines = [
        f"# Soak and fault run: {r['clients']} clients, {r['minutes']:g} min, {r['served_name']}",
        "",
        f"{machine_summary(m)}. Produced by `{r['command']}`.",
        "",
        "| sent | answered | refused (429/503) | refused without Retry-After | failed | hung up by client |",
        "|---|---|---|---|---|---|",
        f"| {s['sent']} | {s['answered']} | {s['refused']} | {s['refused_without_retry_after']} | {s['failed']} "
        f"| {s['hung_up']} |",
        "",
        f"Usage exact (registry rows with status 200 = answers' `usage`): **{s['usage_exact']}** "
        f"(registry {s['usage_registry_200']}, clients {s['usage_clients']}); key tokens_used = sum of all usage "
        f"rows: {s['key_tokens_used_equals_usage_rows']}; tokens still reserved: {s['key_tokens_reserved_after']}.",
        f"RSS after the first minute: {s['rss_mb_min_max_after_first_minute']} MB "
        f"(drift {s['rss_drift_pct'] if s['rss_drift_pct'] is None else round(s['rss_drift_pct'], 2)} %).",
        "",
        "| minute | sent | answered | refused | failed | hung up | TTFT p50 ms | TTFT p99 ms | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in s["per_minute"]:
        def f1(v: Any) -> str:
            return "-" if v is None else f"{v:.0f}"
        lines.append(f"| {p['minute']} | {p['sent']} | {p['answered']} | {p['refused']} | {p['failed'] + p['error']} "
                     f"| {p['hung_up']} | {f1(p['ttft_p50_ms'])} | {f1(p['ttft_p99_ms'])} | {f1(p['rss_mb'])} |")
    lines += ["", "## kill -9 mid-load, then restart", "", "| check | result |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in f.items()]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, per_minute: list[dict[str, Any]], rss: list[tuple[float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ms = [p["minute"] for p in per_minute]
    a1.plot(ms, [p["ttft_p50_ms"] or 0 for p in per_minute], "o-", label="TTFT p50")
    a1.plot(ms, [p["ttft_p99_ms"] or 0 for p in per_minute], "s-", label="TTFT p99")
    a1.set_xlabel("minute")
    a1.set_ylabel("ms")
    a1.legend()
    a1.set_title("streaming TTFT per minute")
    a2.plot([t / 60 for t, _ in rss], [v for _, v in rss])
    a2.set_xlabel("minute")
    a2.set_ylabel("server RSS (MB)")
    a2.set_title("memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
