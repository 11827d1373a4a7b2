"""Serving benchmark: the llmpress engine behind HTTP vs plain HF `generate()`, in one run.

Writes `serving.json` and `serving.md`: for 1 / 8 / 32 concurrent HTTP clients (fixed prompt and
output lengths, streaming, ignore_eos) the aggregate output tok/s, TTFT p50/p99 and TPOT p50/p99;
HF `generate()` serving the same requests one at a time and in static batches of 32; the engine's
own batch-1 decode speed and TTFT (to isolate server overhead); and memory bandwidth, so batch-1
decode can be stated as a fraction of the bandwidth limit (weight bytes read per token).
The server is `llmpress serve` in its own process, as deployed; the load generator (httpx, asyncio)
runs in this one. Never asserts time. Run under `flock /tmp/llmpress-bench.lock`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from _live import free_port, launch, pct, stop  # noqa: E402


def prompts_for(tok: Any, n: int, length: int) -> list[list[int]]:
    base = tok.encode("The history of the lighthouse keepers along the northern coast is long and full of stories. " * 20)
    return [[(t + i) % 40000 + 100 if j == 0 else t for j, t in enumerate(base[:length])] for i in range(n)]


def hf_one_at_a_time(model: Any, prompts: list[list[int]], out_len: int) -> dict[str, float]:
    toks = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            x = torch.tensor([p])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=out_len, min_new_tokens=out_len,
                               do_sample=False)
            toks += y.shape[1] - x.shape[1]
    dt = time.perf_counter() - t0
    return {"requests": len(prompts), "output_tokens": toks, "seconds": dt, "tok_s": toks / dt}


def hf_decode_rate(model: Any, prompt: list[int], out_len: int, reps: int = 2) -> float:
    """HF `generate()` batch-1 decode tok/s without the prefill: (out_len - 1) / (t(out_len) - t(1)), best of reps."""
    x = torch.tensor([prompt])

    def run(n: int) -> float:
        t = time.perf_counter()
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - t

    with torch.inference_mode():
        return max((out_len - 1) / (run(out_len) - run(1)) for _ in range(reps))


def hf_static_batches(model: Any, prompts: list[list[int]], out_len: int, batch: int) -> dict[str, float]:
    toks = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            x = torch.tensor(prompts[i:i + batch])  # equal lengths: no padding needed
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=out_len, min_new_tokens=out_len,
                               do_sample=False)
            toks += (y.shape[1] - x.shape[1]) * x.shape[0]
    dt = time.perf_counter() - t0
    return {"requests": len(prompts), "batch": batch, "output_tokens": toks, "seconds": dt, "tok_s": toks / dt}


def start_server(model_ref: str, args: argparse.Namespace) -> tuple[str, subprocess.Popen]:
    """`llmpress serve` in its own process on a free loopback port (as deployed: the client load
    generator must not share the server's GIL); returns once /ready answers 200."""
    port = free_port()
    cmd = ["serve", model_ref, "--host", "127.0.0.1", "--port", str(port),
           "--no-auth", "--max-batch", "32", "--max-tokens-per-step", str(args.step_tokens),
           "--kv-cache-mb", str(args.kv_cache_mb), "--no-prefix-caching", "--log-level", "warning"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return f"http://127.0.0.1:{port}", launch(cmd, port)


async def http_load(url: str, name: str, prompts: list[list[int]], out_len: int, concurrency: int) -> dict[str, Any]:
    """`concurrency` clients, each sending its share of the prompts back to back, streaming."""
    import httpx

    ttft: list[float] = []
    tpot: list[float] = []
    counts: list[int] = []
    queue = list(prompts)

    async def client(c: httpx.AsyncClient) -> None:
        while queue:
            p = queue.pop()
            body = {"model": name, "prompt": p, "max_tokens": out_len, "temperature": 0, "ignore_eos": True,
                    "stream": True}
            t0 = time.perf_counter()
            first = None
            n = 0
            async with c.stream("POST", url + "/v1/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    if first is None:
                        first = time.perf_counter()
                    n += 1
            end = time.perf_counter()
            ttft.append((first or end) - t0)
            tpot.append((end - (first or end)) / max(1, out_len - 1))
            counts.append(n)

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        dt = time.perf_counter() - t0
    toks = len(prompts) * out_len
    return {"concurrency": concurrency, "requests": len(prompts), "output_tokens": toks, "seconds": dt,
            "tok_s": toks / dt, "ttft_p50_ms": 1000 * pct(ttft, 50), "ttft_p99_ms": 1000 * pct(ttft, 99),
            "tpot_p50_ms": 1000 * pct(tpot, 50), "tpot_p99_ms": 1000 * pct(tpot, 99),
            "sse_events_p50": statistics.median(counts)}


def engine_batch1(engine: Any, prompt: list[int], out_len: int, reps: int = 2) -> dict[str, float]:
    from llmpress.engine import SamplingParams

    best = None
    for _ in range(reps):
        seq = engine.add_request(prompt, SamplingParams(max_tokens=out_len, temperature=0, ignore_eos=True))
        while engine.has_work():
            engine.step()
        decode = (seq.finish_time - seq.first_token_time) / (out_len - 1)
        r = {"ttft_ms": 1000 * seq.ttft, "decode_tok_s": 1 / decode, "tpot_ms": 1000 * decode}
        if best is None or r["decode_tok_s"] > best["decode_tok_s"]:
            best = r
    assert best is not None
    return best


def bench_model(label: str, art: Any, args: argparse.Namespace, bw: float, hf_ref: dict[str, Any]) -> dict[str, Any]:
    """The engine in this process at batch 1 (its own TTFT and decode), then the same artifact
    behind `llmpress serve` with 1 / 8 / 32 concurrent streaming HTTP clients."""
    from llmpress.engine import LLMEngine
    from llmpress.evaluate.machine import weight_bytes

    engine = LLMEngine.from_artifact(art, max_batch=32, max_tokens_per_step=args.step_tokens,
                                     kv_cache_mb=args.kv_cache_mb, enable_prefix_caching=False)
    model, tok = engine.runner.model, engine.tokenizer
    p = prompts_for(tok, 64, args.prompt_len)
    res: dict[str, Any] = {"label": label, "artifact": art.id, "weight_bytes": weight_bytes(model)}
    engine_batch1(engine, p[0], 4, reps=1)  # warm-up
    res["engine_batch1"] = e1 = engine_batch1(engine, p[1], args.output_len)
    res["engine_batch1"]["bandwidth_limit_tok_s"] = lim = bw * 1e9 / res["weight_bytes"]
    res["engine_batch1"]["fraction_of_bandwidth_limit"] = e1["decode_tok_s"] / lim
    e1["x_hf_batch1"] = e1["decode_tok_s"] / hf_ref["batch1_decode_tok_s"]
    del engine, model
    gc.collect()
    url, proc = start_server(str(art.path), args)
    try:
        import httpx

        served = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        asyncio.run(http_load(url, served, p[:2], 4, 2))  # warm-up
        res["http"] = {}
        for c in args.concurrency:
            n = max(c, args.requests_min if c > 1 else args.requests_batch1)
            r = res["http"][str(c)] = asyncio.run(http_load(url, served, p[:n], args.output_len, c))
            r["x_hf_static32"] = r["tok_s"] / hf_ref["static32"]["tok_s"]
            r["x_hf_one_at_a_time"] = r["tok_s"] / hf_ref["one_at_a_time"]["tok_s"]
            print(f"  {label} c={c}: {r['tok_s']:.1f} tok/s", flush=True)
    finally:
        stop(proc)
    h1 = res["http"].get("1")
    if h1:
        res["server_overhead_ttft_ms"] = h1["ttft_p50_ms"] - e1["ttft_ms"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--requests-min", type=int, default=32, help="requests per level with concurrency > 1")
    ap.add_argument("--requests-batch1", type=int, default=4)
    ap.add_argument("--hf-one-at-a-time", type=int, default=4, help="requests HF serves sequentially")
    ap.add_argument("--step-tokens", type=int, default=512)
    ap.add_argument("--kv-cache-mb", type=float, default=256)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from llmpress.sources import resolve

    art = resolve(args.model)
    model = art.load_model(dtype=torch.float32)
    tok = art.load_tokenizer()
    from llmpress.evaluate.machine import memory_bandwidth

    bw = memory_bandwidth()["read_gb_s"]
    print(f"memory bandwidth ~{bw:.1f} GB/s", flush=True)
    p = prompts_for(tok, 64, args.prompt_len)
    hf: dict[str, Any] = {}
    hf_one_at_a_time(model, p[:1], 4)  # warm-up
    hf["one_at_a_time"] = hf_one_at_a_time(model, p[:args.hf_one_at_a_time], args.output_len)
    hf["batch1_decode_tok_s"] = hf_decode_rate(model, p[0], args.output_len)
    hf["static32"] = hf_static_batches(model, p[:32], args.output_len, 32)
    print(f"  HF one-at-a-time {hf['one_at_a_time']['tok_s']:.1f} tok/s, static 32 {hf['static32']['tok_s']:.1f} tok/s",
          flush=True)
    from llmpress.hardware import benchmark_record, machine_summary

    result: dict[str, Any] = {**benchmark_record(sys.argv), "model": args.model, "prompt_len": args.prompt_len, "output_len": args.output_len,
                              "threads": torch.get_num_threads(), "bandwidth_gbs": bw, "hf_fp32": hf, "engine": []}
    del model
    gc.collect()
    result["engine"].append(bench_model("fp32", art, args, bw, hf))
    if not args.no_int8:
        from llmpress.compress.quantize import make_config, quantize

        q = quantize(art, make_config("int8-weight-only"))
        result["engine"].append(bench_model("int8-weight-only", q, args, bw, hf))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps(result, indent=2, default=str))
    md = [f"# Serving: {args.model}, prompt {args.prompt_len} / output {args.output_len} tokens, "
          f"{result['threads']} threads, bandwidth {bw:.1f} GB/s", "", machine_summary(result["machine"]),
          f"Command: `{result['command']}`", "",
          f"HF `generate()` fp32: one at a time {hf['one_at_a_time']['tok_s']:.1f} tok/s (batch-1 decode alone "
          f"{hf['batch1_decode_tok_s']:.1f} tok/s); "
          f"static batch 32 {hf['static32']['tok_s']:.1f} tok/s", "",
          "| model | clients | tok/s | × HF static32 | × HF 1-at-a-time | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |",
          "|---|---|---|---|---|---|---|---|---|"]
    for e in result["engine"]:
        for c, r in e["http"].items():
            md.append(f"| {e['label']} | {c} | {r['tok_s']:.1f} | {r.get('x_hf_static32', float('nan')):.2f} | "
                      f"{r.get('x_hf_one_at_a_time', float('nan')):.2f} | {r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | "
                      f"{r['tpot_p50_ms']:.1f} | {r['tpot_p99_ms']:.1f} |")
    md += ["", "| model | engine batch-1 decode tok/s | × HF fp32 batch 1 | bandwidth limit tok/s | fraction | "
               "engine TTFT ms | HTTP TTFT overhead ms |", "|---|---|---|---|---|---|---|"]
    for e in result["engine"]:
        b = e["engine_batch1"]
        md.append(f"| {e['label']} | {b['decode_tok_s']:.1f} | {b.get('x_hf_batch1', float('nan')):.2f} | "
                  f"{b['bandwidth_limit_tok_s']:.1f} | {b['fraction_of_bandwidth_limit']:.2f} | {b['ttft_ms']:.0f} | "
                  f"{e.get('server_overhead_ttft_ms', float('nan')):.1f} |")
    (out / "serving.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
