"""Structured pruning on SmolLM2-135M: parameters, size, perplexity and decode speed, before and after.

Prunes `--heads` / `--mlp` (fractions, per layer, ranked by calibration importance; pieces
physically removed), optionally recovers by distilling from the parent for `--recover` steps,
then evaluates parent and child in the same run on the same eval tokens and with the same
speed settings (the llmpress engine, what `llmpress serve` runs). Writes `pruning.json` and
`pruning.md`; never asserts a time.

    .venv/bin/python benchmarks/pruning.py [--heads 25% --mlp 25% --recover 100]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--data", default="builtin:pydoc")
    ap.add_argument("--heads", default="25%")
    ap.add_argument("--mlp", default="25%")
    ap.add_argument("--recover", type=int, default=100, help="recovery distillation steps (batch 4 x 256 tokens)")
    ap.add_argument("--recover-lr", type=float, default=5e-5)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    from llmpress.cli.common import progress
    from llmpress.compress.prune import PruneConfig, prune
    from llmpress.evaluate import EvalConfig, SpeedConfig, evaluate_artifact
    from llmpress.report.tables import markdown_table
    from llmpress.sources import resolve

    cfg = EvalConfig(data=args.data, max_tokens=args.max_tokens,
                     speed_config=SpeedConfig(batch_sizes=(1, 8), new_tokens=args.new_tokens, repeats=args.repeats))
    t0 = time.perf_counter()
    parent = resolve(args.model)
    rows: list[dict[str, Any]] = []
    with progress() as p:
        tp = time.perf_counter()
        child = prune(parent, PruneConfig(method="structured", heads=args.heads, mlp=args.mlp, data=args.data,
                                          recover_steps=args.recover, recover_lr=args.recover_lr), progress=p)
        prune_s = time.perf_counter() - tp
        for label, art in (("parent", parent), ("pruned", child)):
            m = evaluate_artifact(art, cfg, progress=p)
            dec = m["speed"]["decode"]
            rows.append({"model": label, "artifact": art.id, "params": m["size"]["params"],
                         "size_mb": art.bytes_on_disk() / 1e6, "perplexity": m["quality"]["perplexity"],
                         "b1_tok_s": dec["b1"]["tok_s"]["median"], "b8_tok_s": dec["b8"]["tok_s"]["median"],
                         "peak_rss_mb": m["speed"]["peak_rss_mb"], "runner": m["speed"]["runner"]})
    base, pr = rows
    for r in rows:
        r["params_ratio"] = r["params"] / base["params"]
        r["size_ratio"] = r["size_mb"] / base["size_mb"]
        r["delta_ppl_pct"] = (r["perplexity"] / base["perplexity"] - 1) * 100
        r["b1_speedup"] = r["b1_tok_s"] / base["b1_tok_s"]
        r["b8_speedup"] = r["b8_tok_s"] / base["b8_tok_s"]
    report = child.manifest.metrics.get("prune", {})
    rec = report.get("recovery", {})
    result = {"model": args.model, "heads": args.heads, "mlp": args.mlp, "recover_steps": args.recover,
              "recover_lr": args.recover_lr, "prune_and_recover_s": prune_s, "prune_report": report, "rows": rows,
              "seconds": time.perf_counter() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pruning.json").write_text(json.dumps(result, indent=2, default=str))
    headers = ["model", "params", "params ×", "size MB", "size ×", "perplexity", "Δ ppl %", "b1 tok/s", "b1 ×",
               "b8 tok/s", "b8 ×", "peak RSS MB"]
    table = [[r["model"], r["params"], r["params_ratio"], r["size_mb"], r["size_ratio"], r["perplexity"],
              r["delta_ppl_pct"], r["b1_tok_s"], r["b1_speedup"], r["b8_tok_s"], r["b8_speedup"], r["peak_rss_mb"]]
             for r in rows]
    md = [f"# Structured pruning: {args.model}, heads {args.heads}, MLP {args.mlp}, recovery {args.recover} steps", "",
          f"Eval: {args.max_tokens} tokens of the {args.data} eval split (window 512, stride 256). Decode: "
          f"{args.new_tokens} new tokens, median of {args.repeats}, runner `{base['runner']}`, parent and child "
          f"measured in this run. Prune + recovery took {prune_s / 60:.1f} min"
          + (f" (recovery: {rec.get('steps', args.recover)} steps, batch {rec.get('batch_size')} x "
             f"{rec.get('seq_len')} tokens, lr {rec.get('lr')})" if rec else "") + ".", "",
          markdown_table(headers, table)]
    (out / "pruning.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
