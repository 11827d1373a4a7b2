"""Edge benchmark: format x precision -> file size, load time, RSS, batch-1 tok/s, Δppl vs the fp32 source.

Every variant is exported from the same source (`llmpress export`), verified, then measured by
`evaluate_artifact` exactly like any artifact: perplexity on the same eval windows, decode in a
fresh process through the format's own runtime (ONNX Runtime GenAI, llama.cpp — or the gguf
reader when llama-cpp-python is not installed; the `runtime` column says which ran), load time
and RSS from that process, bytes on disk. The same precision inside llmpress is measured
alongside, so each export's cost is visible against llmpress's own. Writes `edge.json`, `edge.md`
and `edge.png` to benchmarks/results/. Never asserts a time.

    flock /tmp/llmpress-bench.lock .venv/bin/python benchmarks/edge.py [--quick] [--model builtin:tiny-llama]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (label, how): "llmpress:SCHEME" quantizes inside llmpress; "FORMAT:PRECISION[@int4]" exports the source
# (or, with @int4, llmpress's int4 g32 artifact: q4_1 then maps its blocks without re-quantizing).
VARIANTS = ["llmpress:fp32", "llmpress:int4-g32", "onnx:fp32", "onnx:int4", "gguf:f32", "gguf:f16", "gguf:q8_0",
            "gguf:q4_0", "gguf:q4_1", "gguf:q4_1@int4"]


def row(label: str, art: Any, m: dict[str, Any], base_ppl: float, export_s: float | None) -> dict[str, Any]:
    q, s = m.get("quality", {}), m.get("speed", {})
    b1 = s.get("decode", {}).get("b1", {}).get("tok_s", {}).get("median")
    fmt, _, prec = label.partition(":")
    return {"variant": label, "format": fmt, "precision": prec, "artifact": art.id, "runtime": s.get("runner"),
            "size_mb": art.bytes_on_disk() / 1e6, "load_s": s.get("load_s"),
            "rss_after_load_mb": s.get("rss_after_load_mb"), "peak_rss_mb": s.get("peak_rss_mb"), "b1_tok_s": b1,
            "perplexity": q.get("perplexity"),
            "delta_ppl_pct": (q["perplexity"] / base_ppl - 1) * 100 if "perplexity" in q else None,
            "export_s": export_s, "verification": art.manifest.extra.get("export", {}).get("verification")}


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 5.5))
    style = {"llmpress": ("o", "tab:blue"), "onnx": ("s", "tab:orange"), "gguf": ("^", "tab:green")}
    fastest = max((r["b1_tok_s"] or 0) for r in rows) or 1.0
    for r in rows:
        if r["delta_ppl_pct"] is None:
            continue
        marker, color = style.get(r["format"], ("x", "tab:gray"))
        ax.scatter(r["size_mb"], r["delta_ppl_pct"], marker=marker, color=color, alpha=0.6,
                   s=30 + 300 * (r["b1_tok_s"] or 0) / fastest)
        ax.annotate(f"{r['variant']} ({(r['b1_tok_s'] or 0):.0f} tok/s)", (r["size_mb"], r["delta_ppl_pct"]),
                    fontsize=7, xytext=(5, 3), textcoords="offset points")
    ax.legend(handles=[Line2D([], [], marker=m, color=c, linestyle="", label=f) for f, (m, c) in style.items()])
    ax.set_xlabel("MB on disk")
    ax.set_ylabel("Δ perplexity vs fp32 source (%)")
    ax.set_title(title + " (marker area ~ batch-1 tok/s)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--data", default="builtin:pydoc")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--quick", action="store_true", help="512 eval tokens, 8 new tokens, 1 repeat (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.max_tokens, args.new_tokens, args.repeats = 512, 8, 1

    from llmpress.cli.common import progress
    from llmpress.compress.quantize import make_config as qconfig
    from llmpress.compress.quantize import quantize
    from llmpress.evaluate import EvalConfig, SpeedConfig, evaluate_artifact
    from llmpress.export import export, make_config
    from llmpress.hardware import benchmark_record, machine_summary
    from llmpress.report.tables import markdown_table
    from llmpress.sources import resolve

    cfg = EvalConfig(data=args.data, max_tokens=args.max_tokens,
                     speed_config=SpeedConfig(batch_sizes=(1,), new_tokens=args.new_tokens, repeats=args.repeats))
    t_start = time.perf_counter()
    src = resolve(args.model)
    rows: list[dict[str, Any]] = []
    int4 = None
    with progress() as p:
        base = evaluate_artifact(src, cfg, progress=p)
        base_ppl = base["quality"]["perplexity"]
        for v in [x.strip() for x in args.variants.split(",") if x.strip()]:
            fmt, _, prec = v.partition(":")
            t = time.perf_counter()
            if v == "llmpress:fp32":
                rows.append(row(v, src, base, base_ppl, None))
                continue
            if fmt == "llmpress" or prec.endswith("@int4"):
                if int4 is None:
                    int4 = quantize(src, qconfig("int4-weight-only", group_size=32), progress=p)
                if fmt == "llmpress":
                    rows.append(row(v, int4, evaluate_artifact(int4, cfg, progress=p), base_ppl,
                                    time.perf_counter() - t))
                    continue
            origin = int4 if prec.endswith("@int4") else src
            art = export(origin, make_config(fmt, precision=prec.removesuffix("@int4")), progress=p)
            secs = time.perf_counter() - t
            rows.append(row(v, art, evaluate_artifact(art, cfg, progress=p), base_ppl, secs))
    result = {"model": args.model, "data": args.data, "eval_tokens": args.max_tokens, "new_tokens": args.new_tokens,
              "repeats": args.repeats, "quick": args.quick, **benchmark_record(sys.argv),
              "seconds": time.perf_counter() - t_start, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "edge.json").write_text(json.dumps(result, indent=2, default=str))
    plot(rows, out / "edge.png", f"{args.model}: formats for the edge")
    headers = ["variant", "runtime", "MB on disk", "load s", "RSS after load MB", "peak RSS MB", "b1 tok/s",
               "perplexity", "Δ ppl %", "export s"]
    table = [[r["variant"], r["runtime"], r["size_mb"], r["load_s"], r["rss_after_load_mb"], r["peak_rss_mb"],
              r["b1_tok_s"], r["perplexity"], r["delta_ppl_pct"], r["export_s"]] for r in rows]
    mi = result["machine"]
    md = [f"# Edge formats: {args.model} on {args.data}", "",
          f"Eval: {args.max_tokens} tokens of the eval split (window 512, stride 256); Δ vs the fp32 source in "
          f"llmpress. Decode: batch 1, {args.new_tokens} new tokens, median of {args.repeats}, in a fresh process "
          f"through each format's runtime. {machine_summary(mi)}; `{result['command']}`; "
          f"commit {mi['git_commit']}; run took {result['seconds'] / 60:.1f} min.", "",
          markdown_table(headers, table), "", "![edge](edge.png)"]
    (out / "edge.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
