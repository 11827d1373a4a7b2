"""Scale benchmark: `llmpress serve` as 1 and 2 Ray Serve replicas vs the plain one-process server, in one run.

Writes `scale.json`, `scale.md` and `scale.png` to benchmarks/results/: for 8 / 32 / 64 concurrent
streaming clients (fixed prompt and output lengths, ignore_eos) the aggregate requests/s, output tok/s
and TTFT p50 / p99 of (a) plain `llmpress serve --threads 1`, (b) `--replicas 1`, (c) `--replicas 2`
(1 thread each, a local Ray cluster on 127.0.0.1 with 2 CPUs); the Ray Serve overhead per request
(median latency of a 1-token request, Ray 1 replica minus plain, one client); and a failover run:
2 replicas under load, one SIGKILLed mid-run, counting lost requests (must be 0: the gateway retries
requests a dying replica had not answered) and the time until Serve has replaced it.
Every server is the real CLI in its own process. Never asserts time. `--quick` uses tiny-llama and
one request per client, for a smoke run; the numbers that matter come from a full run on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _live import free_port, launch, pct, stop

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def start(model: str, args: argparse.Namespace, replicas: int = 0) -> tuple[str, subprocess.Popen]:
    """`llmpress serve` (plain, or on Ray with `replicas`) in its own process; returns once /ready is 200."""
    port = free_port()
    cmd = ["serve", model, "--host", "127.0.0.1", "--port", str(port),
           "--no-auth", "--threads", "1", "--max-batch", str(args.max_batch), "--kv-cache-mb", str(args.kv_cache_mb),
           "--no-prefix-caching", "--log-level", "warning"]
    if replicas:
        cmd += ["--replicas", str(replicas)]
    # its own session: stop() can end the Ray workers it started with the whole group
    return f"http://127.0.0.1:{port}", launch(cmd, port, timeout=600, new_session=True)


async def load(url: str, model: str, prompts: list[list[int]], out_len: int, concurrency: int) -> dict[str, Any]:
    """`concurrency` clients, each streaming its share of the prompts back to back."""
    import httpx

    ttft: list[float] = []
    errors = 0
    replicas: dict[str, int] = {}
    queue = list(prompts)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue:
            p = queue.pop()
            body = {"model": model, "prompt": p, "max_tokens": out_len, "temperature": 0, "ignore_eos": True,
                    "stream": True}
            t0 = time.perf_counter()
            first = None
            async with c.stream("POST", url + "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    errors += 1
                    await r.aread()
                    continue
                rep = r.headers.get("x-llmpress-replica", "plain")
                replicas[rep] = replicas.get(rep, 0) + 1
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]" and first is None:
                        first = time.perf_counter()
            ttft.append(((first or time.perf_counter()) - t0) * 1000)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        dt = time.perf_counter() - t0
    n = len(prompts) - errors
    return {"concurrency": concurrency, "requests": len(prompts), "errors": errors, "seconds": dt, "rps": n / dt,
            "tok_s": n * out_len / dt, "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99),
            "by_replica": replicas}


def overhead(url: str, model: str, n: int) -> dict[str, float]:
    """One client, `n` sequential 1-token non-streaming requests: median and p90 latency (ms)."""
    import httpx

    lat = []
    with httpx.Client(timeout=120) as c:
        for i in range(n + 2):
            t0 = time.perf_counter()
            r = c.post(url + "/v1/completions", json={"model": model, "prompt": f"x {i}", "max_tokens": 1})
            r.raise_for_status()
            if i >= 2:  # warm-up
                lat.append((time.perf_counter() - t0) * 1000)
    return {"requests": n, "latency_p50_ms": statistics.median(lat), "latency_p90_ms": pct(lat, 90)}


def failover(url: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """2 replicas under non-streaming load; SIGKILL the replica that served the first response mid-run."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    n, clients = args.failover_requests, args.failover_clients
    codes: list[int] = []
    attempts: list[int] = []
    pids: list[int] = []

    def one(i: int) -> None:
        try:
            r = httpx.post(url + "/v1/completions", timeout=600,
                           json={"model": model, "prompt": f"failover {i}", "max_tokens": args.failover_tokens,
                                 "ignore_eos": True})
            codes.append(r.status_code)
            attempts.append(int(r.headers.get("x-llmpress-attempts", "1")))
            if r.status_code == 200:
                pids.append(int(r.headers["x-llmpress-replica-pid"]))
        except httpx.HTTPError:
            codes.append(-1)

    with ThreadPoolExecutor(clients) as ex:
        futs = [ex.submit(one, i) for i in range(n)]
        deadline = time.time() + 300
        while not pids and time.time() < deadline:
            time.sleep(0.05)
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        t_kill = time.time()
        for f in futs:
            f.result(timeout=600)
    # replaced: two live replicas (neither the victim) answer again
    replaced_s = None
    deadline = time.time() + 300
    while time.time() < deadline:
        seen = set()
        for i in range(8):
            try:
                r = httpx.post(url + "/v1/completions", json={"model": model, "prompt": f"after {i}", "max_tokens": 1},
                               headers={"x-session-id": f"probe-{i}-{time.time()}"}, timeout=60)
                if r.status_code == 200:
                    seen.add(int(r.headers["x-llmpress-replica-pid"]))
            except httpx.HTTPError:
                pass
        if len(seen) == 2 and victim not in seen:
            replaced_s = time.time() - t_kill
            break
        time.sleep(1)
    lost = sum(1 for c in codes if c != 200)
    return {"requests": n, "clients": clients, "lost": lost, "retried": sum(1 for a in attempts if a > 1),
            "status_codes": {str(c): codes.count(c) for c in sorted(set(codes))}, "killed_pid": victim,
            "replaced_after_s": replaced_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--quick", action="store_true", help="tiny-llama, one request per client, short outputs")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 64])
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--overhead-requests", type=int, default=30)
    ap.add_argument("--failover-requests", type=int, default=64)
    ap.add_argument("--failover-clients", type=int, default=16)
    ap.add_argument("--failover-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--kv-cache-mb", type=float, default=256)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.quick:
        args.model = "builtin:tiny-llama" if args.model == "builtin:smollm2-135m" else args.model
        args.prompt_len, args.output_len, args.requests_per_client = 32, 16, 1
        args.overhead_requests, args.failover_requests, args.failover_clients = 10, 24, 8
        args.failover_tokens, args.kv_cache_mb = 48, 64

    import torch

    from llmpress.hardware import benchmark_record, machine_summary
    from llmpress.sources import resolve

    art = resolve(args.model)
    tok = art.load_tokenizer()
    vocab = len(tok)
    g = torch.Generator().manual_seed(0)
    n_max = max(args.concurrency) * args.requests_per_client
    prompts = [torch.randint(10, vocab - 10, (args.prompt_len,), generator=g).tolist() for _ in range(n_max)]
    result: dict[str, Any] = {"model": args.model, "artifact": art.id, "quick": args.quick,
                              "prompt_len": args.prompt_len, "output_len": args.output_len,
                              "threads": 1, **benchmark_record(sys.argv), "runs": {}}
    for label, replicas in (("plain", 0), ("ray-1", 1), ("ray-2", 2)):
        print(f"[{label}] starting", flush=True)
        url, proc = start(args.model, args, replicas)
        try:
            served = __import__("httpx").get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
            asyncio.run(load(url, served, prompts[:4], 4, 2))  # warm-up
            run: dict[str, Any] = {"levels": {}}
            for c in args.concurrency:
                r = asyncio.run(load(url, served, prompts[:c * args.requests_per_client], args.output_len, c))
                run["levels"][str(c)] = r
                print(f"  {label} c={c}: {r['rps']:.2f} req/s {r['tok_s']:.0f} tok/s TTFT p50 {r['ttft_p50_ms']:.0f} "
                      f"p99 {r['ttft_p99_ms']:.0f} ms errors {r['errors']} {r['by_replica']}", flush=True)
            if replicas <= 1:
                run["overhead"] = overhead(url, served, args.overhead_requests)
            if replicas == 2:
                print("  failover: killing a replica under load", flush=True)
                run["failover"] = failover(url, served, args)
                print(f"  failover: {run['failover']}", flush=True)
            result["runs"][label] = run
        finally:
            stop(proc, wait=120)  # SIGINT: drains, then (Ray) shuts Serve and the local cluster down
    plain, ray1 = result["runs"]["plain"], result["runs"]["ray-1"]
    result["ray_overhead_ms_per_request"] = ray1["overhead"]["latency_p50_ms"] - plain["overhead"]["latency_p50_ms"]
    result["replica_curve"] = {"prompt_len": args.prompt_len, "output_len": args.output_len, "threads": 1,
                               "points": [{"concurrency": r["concurrency"], "rps": r["rps"],
                                           "ttft_p50_ms": r["ttft_p50_ms"], "ttft_p99_ms": r["ttft_p99_ms"],
                                           "tok_s": r["tok_s"]} for r in ray1["levels"].values()]}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "scale_quick" if args.quick else "scale"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [f"# Scale: {args.model} ({art.id}), prompt {args.prompt_len} / output {args.output_len} tokens, "
             "1 thread per server process or replica", "",
             f"{machine_summary(result['machine'])}; `{result['command']}`"
             + ("  (**--quick smoke run: not a measurement**)" if args.quick else ""), "",
             "| server | clients | req/s | tok/s | TTFT p50 ms | TTFT p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for label, run in result["runs"].items():
        for c, r in run["levels"].items():
            lines.append(f"| {label} | {c} | {r['rps']:.2f} | {r['tok_s']:.0f} | {r['ttft_p50_ms']:.0f} | "
                         f"{r['ttft_p99_ms']:.0f} | {r['errors']} |")
    fo = result["runs"]["ray-2"]["failover"]
    lines += ["", f"Ray Serve overhead per request (median latency of a 1-token request, 1 replica vs plain): "
              f"{result['ray_overhead_ms_per_request']:.1f} ms "
              f"({ray1['overhead']['latency_p50_ms']:.1f} vs {plain['overhead']['latency_p50_ms']:.1f} ms).", "",
              f"Failover: {fo['requests']} requests from {fo['clients']} clients, one replica SIGKILLed mid-run: "
              f"**{fo['lost']} lost**, {fo['retried']} retried on the other replica, replaced after "
              f"{fo['replaced_after_s'] if fo['replaced_after_s'] is None else round(fo['replaced_after_s'], 1)} s.", ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
        for label, run in result["runs"].items():
            cs = [int(c) for c in run["levels"]]
            a1.plot(cs, [r["rps"] for r in run["levels"].values()], "o-", label=label)
            a2.plot(cs, [r["ttft_p99_ms"] for r in run["levels"].values()], "o-", label=label)
        a1.set(xlabel="concurrent clients", ylabel="requests/s", title="throughput")
        a2.set(xlabel="concurrent clients", ylabel="ms", title="TTFT p99")
        for a in (a1, a2):
            a.grid(alpha=0.3)
            a.legend()
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png")
        plt.close(fig)
    except ImportError:
        pass
    print("\n".join(lines))


if __name__ == "__main__":
    main()
