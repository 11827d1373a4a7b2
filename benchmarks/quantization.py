"""Quantization benchmark on SmolLM2-135M: every scheme, quality + size + speed, in one run.

Writes `quantization.json` and `quantization.md`: scheme x (perplexity, Δ %, size MB, RSS MB,
b1/b8/b32 decode tok/s, speed ratio vs HF fp32 `generate()` measured in the same run), plus
the machine's memory bandwidth and batch-1 decode as a fraction of the bandwidth limit
(bandwidth / weight bytes read per token). Never asserts a time.

    flock /tmp/llmpress-bench.lock .venv/bin/python benchmarks/quantization.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# int4 group 128 does not divide SmolLM2's width 576 (a ConfigError), so int4 is judged at g64;
# g32 is shown because SmolLM2 ships as Q4_1 (blocks of 32) and re-quantizes almost losslessly there.
RECIPES = ["fp16", "bf16", "int8-dynamic", "int8-weight-only", "int8-static", "int4-weight-only:g32",
           "int4-weight-only:g64", "int4-weight-only:g64,gptq", "qat:g64"]


def weight_bytes(art: Any) -> int:
    """Bytes of weights one decode step reads: the safetensors payload (tied tensors stored once)."""
    return sum(p.stat().st_size for p in art.path.glob("*.safetensors"))


def row(label: str, art: Any, m: dict[str, Any], base_ppl: float, hf_b1: float, bw: float) -> dict[str, Any]:
    q, s = m.get("quality", {}), m.get("speed", {})
    dec = s.get("decode", {})

    def tok(b: int) -> float | None:
        return dec.get(f"b{b}", {}).get("tok_s", {}).get("median")

    wb = weight_bytes(art)
    b1 = tok(1)
    limit = bw * 1e9 / wb
    return {"scheme": label, "artifact": art.id, "perplexity": q.get("perplexity"),
            "delta_pct": (q["perplexity"] / base_ppl - 1) * 100 if "perplexity" in q else None,
            "size_mb": art.bytes_on_disk() / 1e6, "weight_mb": wb / 1e6,
            "rss_after_load_mb": s.get("rss_after_load_mb"), "peak_rss_mb": s.get("peak_rss_mb"),
            "b1_tok_s": b1, "b8_tok_s": tok(8), "b32_tok_s": tok(32),
            "b1_vs_hf_fp32": b1 / hf_b1 if b1 and hf_b1 else None,
            "bandwidth_limit_tok_s": limit, "b1_fraction_of_limit": b1 / limit if b1 else None,
            "facts": art.manifest.extra.get("quantization", {}).get("facts")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--data", default="builtin:pydoc")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--samples", type=int, default=128, help="calibration windows (GPTQ, int8-static)")
    ap.add_argument("--qat-steps", type=int, default=60)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--quick", action="store_true", help="b1 only, fewer tokens (a smoke run)")
    args = ap.parse_args()

    from llmpress.cli.common import progress
    from llmpress.evaluate import EvalConfig, SpeedConfig, evaluate_artifact, measure_in_subprocess
    from llmpress.evaluate.machine import memory_bandwidth
    from llmpress.plan.recipes import RecipeContext, run_recipe, split_recipes
    from llmpress.report.tables import markdown_table
    from llmpress.sources import resolve

    sizes = (1,) if args.quick else (1, 8, 32)
    speed = SpeedConfig(batch_sizes=sizes, new_tokens=args.new_tokens, repeats=args.repeats)
    cfg = EvalConfig(data=args.data, max_tokens=args.max_tokens, speed_config=speed)
    t_start = time.perf_counter()
    bw = memory_bandwidth()
    src = resolve(args.model)
    rows: list[dict[str, Any]] = []
    with progress() as p:
        hf = measure_in_subprocess(src.path, SpeedConfig(batch_sizes=sizes, new_tokens=args.new_tokens,
                                                         repeats=args.repeats, runner="hf"))
        hf_b1 = hf["decode"]["b1"]["tok_s"]["median"]
        base = evaluate_artifact(src, cfg, progress=p)
        base_ppl = base["quality"]["perplexity"]
        rows.append(row(f"fp32 ({base['speed']['runner']})", src, base, base_ppl, hf_b1, bw["read_gb_s"]))
        hf_row = row("fp32 (HF generate)", src, {"quality": base["quality"], "speed": hf}, base_ppl, hf_b1,
                     bw["read_gb_s"])
        rows.insert(0, hf_row)
        ctx = RecipeContext(data=args.data, calibration_samples=args.samples, qat_steps=args.qat_steps, progress=p)
        for recipe in split_recipes(args.recipes):
            t = time.perf_counter()
            art = run_recipe(recipe, src, ctx)
            secs = time.perf_counter() - t
            m = evaluate_artifact(art, cfg, progress=p)
            r = row(recipe, art, m, base_ppl, hf_b1, bw["read_gb_s"])
            r["quantize_s"] = secs
            rows.append(r)
    import torch

    from llmpress.hardware import benchmark_record, machine_summary

    result = {**benchmark_record(sys.argv), "model": args.model, "data": args.data, "eval_tokens": args.max_tokens, "new_tokens": args.new_tokens,
              "repeats": args.repeats, "bandwidth": bw, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "seconds": time.perf_counter() - t_start, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantization.json").write_text(json.dumps(result, indent=2, default=str))
    headers = ["scheme", "perplexity", "Δ ppl %", "size MB", "RSS after load MB", "peak RSS MB", "b1 tok/s",
               "b8 tok/s", "b32 tok/s", "b1 × HF fp32", "b1 % of bandwidth limit"]
    table = [[r["scheme"], r["perplexity"], r["delta_pct"], r["size_mb"], r["rss_after_load_mb"], r["peak_rss_mb"],
              r["b1_tok_s"], r["b8_tok_s"], r["b32_tok_s"], r["b1_vs_hf_fp32"],
              100 * r["b1_fraction_of_limit"] if r["b1_fraction_of_limit"] else None] for r in rows]
    md = [f"# Quantization benchmark: {args.model} on {args.data}", "",
          f"Eval: {args.max_tokens} tokens of the eval split (window 512, stride 256). Decode: {args.new_tokens} new "
          f"tokens, median of {args.repeats}, through the llmpress engine (what `llmpress serve` runs) unless noted; `b1 × HF fp32` divides by HF "
          f"`generate()` fp32 b1 = {hf_b1:.1f} tok/s measured in this run. Memory bandwidth (torch sum over 512 MB, all threads, best of 5): "
          f"{bw['read_gb_s']:.1f} GB/s read, {bw['copy_gb_s']:.1f} GB/s copy; the bandwidth limit is read GB/s / "
          f"weight bytes per token. {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"run took {result['seconds'] / 60:.1f} min.", "", machine_summary(result["machine"]),
          f"Command: `{result['command']}`", "", markdown_table(headers, table)]
    (out / "quantization.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
