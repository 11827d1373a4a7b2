"""Structured pruning on SmolLM2-135M: parameters, size, perplexity and decode speed, before and after.

Prunes `--heads` / `--mlp` (fractions, per layer, ranked by calibration importance; pieces
physically removed) three ways from the same calibration windows: cut only, cut + least-squares
refit of o_proj/down_proj, and cut + refit + `--recover` steps of distillation from the parent.
All are evaluated with the parent in the same run on the same eval tokens and with the same
speed settings (the llmpress engine, what `llmpress serve` runs). Writes `pruning.json` and
`pruning.md`; never asserts a time.

Recovery trains on the corpus's train split, so perplexity on its eval split is in-domain and
can drop below the parent's (the child was fine-tuned on that domain; the parent never was).
Every row is therefore also scored on out-of-domain text the recovery never saw: the test split
of the fortunes quotes (`--ood-data fortunes`; `apt install fortunes`, done by `make install`).
`--ood-only` adds that column to an existing pruning.json without pruning again.

    .venv/bin/python benchmarks/pruning.py [--heads 25% --mlp 25% --recover 300]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--data", default="builtin:pydoc")
    ap.add_argument("--heads", default="25%")
    ap.add_argument("--mlp", default="25%")
    ap.add_argument("--recover", type=int, default=300, help="recovery distillation steps (batch 4 x 256 tokens)")
    ap.add_argument("--recover-lr", type=float, default=1e-4)
    ap.add_argument("--calibration-samples", type=int, default=128, help="calibration windows of 256 tokens")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ood-data", default="fortunes", choices=("fortunes", "none"),
                    help="out-of-domain perplexity text (fortunes test split) or none")
    ap.add_argument("--ood-only", action="store_true", help="only add the out-of-domain column to pruning.json")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    if args.ood_only:
        result = json.loads((out / "pruning.json").read_text())
        if "eval" not in result or "machine" not in result:
            sys.exit(f"{out / 'pruning.json'} was not written by this script (no eval / machine block): "
                     "run it in full first, then --ood-only")
        add_ood(result["rows"], args.max_tokens)
        write(result, args, out)
        return

    from llmpress.cli.common import progress
    from llmpress.compress.prune import PruneConfig, prune
    from llmpress.evaluate import EvalConfig, SpeedConfig, evaluate_artifact
    from llmpress.sources import resolve

    cfg = EvalConfig(data=args.data, max_tokens=args.max_tokens,
                     speed_config=SpeedConfig(batch_sizes=(1, 8), new_tokens=args.new_tokens, repeats=args.repeats))
    t0 = time.perf_counter()
    parent = resolve(args.model)
    rows: list[dict[str, Any]] = []
    variants = [("cut only", False, 0), ("cut + refit", True, 0), (f"cut + refit + {args.recover} recovery steps",
                                                                     True, args.recover)]
    if args.recover == 0:
        variants = variants[:2]
    children: list[tuple[str, Any, float]] = []
    with progress() as p:
        for label, refit, steps in variants:
            tp = time.perf_counter()
            cfg_p = PruneConfig(method="structured", heads=args.heads, mlp=args.mlp, data=args.data,
                                calibration_samples=args.calibration_samples, reconstruct=refit,
                                recover_steps=steps, recover_lr=args.recover_lr,
                                name=f"{parent.name}-prune-bench-{'refit' if refit else 'cut'}-r{steps}")
            children.append((label, prune(parent, cfg_p, progress=p), time.perf_counter() - tp))
        for label, art, _ in [("parent", parent, 0.0)] + children:
            m = evaluate_artifact(art, cfg, progress=p)
            dec = m["speed"]["decode"]
            rows.append({"model": label, "artifact": art.id, "params": m["size"]["params"],
                         "size_mb": art.bytes_on_disk() / 1e6, "perplexity": m["quality"]["perplexity"],
                         "b1_tok_s": dec["b1"]["tok_s"]["median"], "b8_tok_s": dec["b8"]["tok_s"]["median"],
                         "peak_rss_mb": m["speed"]["peak_rss_mb"], "runner": m["speed"]["runner"]})
    child = children[-1][1]
    prune_s = children[-1][2]
    base = rows[0]
    for r in rows:
        r["params_ratio"] = r["params"] / base["params"]
        r["size_ratio"] = r["size_mb"] / base["size_mb"]
        r["delta_ppl_pct"] = (r["perplexity"] / base["perplexity"] - 1) * 100
        r["b1_speedup"] = r["b1_tok_s"] / base["b1_tok_s"]
        r["b8_speedup"] = r["b8_tok_s"] / base["b8_tok_s"]
    if args.ood_data == "fortunes":
        add_ood(rows, args.max_tokens)
    report = child.manifest.metrics.get("prune", {})
    from llmpress.hardware import benchmark_record

    result = {**benchmark_record(sys.argv), "model": args.model, "heads": args.heads, "mlp": args.mlp, "recover_steps": args.recover,
              "recover_lr": args.recover_lr, "calibration_samples": args.calibration_samples,
              "prune_and_recover_s": prune_s, "prune_report": report, "rows": rows,
              "eval": {"data": args.data, "max_tokens": args.max_tokens, "new_tokens": args.new_tokens,
                       "repeats": args.repeats},
              "seconds": time.perf_counter() - t0}
    write(result, args, out)


def add_ood(rows: list[dict[str, Any]], max_tokens: int) -> None:
    """Perplexity of every row's artifact on the fortunes test split (text no recovery saw), and its Δ."""
    from llmpress.data.fortunes import load_fortunes
    from llmpress.evaluate.quality import perplexity
    from llmpress.sources import resolve

    texts = load_fortunes(per_category=200).test_texts
    for r in rows:
        art = resolve(r["artifact"])
        r["ood_perplexity"] = perplexity(art.load_model(), art.load_tokenizer(), texts,
                                         max_tokens=max_tokens)["perplexity"]
    for r in rows:
        r["ood_delta_ppl_pct"] = (r["ood_perplexity"] / rows[0]["ood_perplexity"] - 1) * 100


def write(result: dict[str, Any], args: Any, out: Path) -> None:
    from llmpress.hardware import machine_summary
    from llmpress.report.tables import markdown_table

    rows = result["rows"]
    base = rows[0]
    rec = result["prune_report"].get("recovery", {})
    ev = result.get("eval", {"data": args.data, "max_tokens": args.max_tokens, "new_tokens": args.new_tokens,
                             "repeats": args.repeats})
    ood = "ood_perplexity" in base
    out.mkdir(parents=True, exist_ok=True)
    (out / "pruning.json").write_text(json.dumps(result, indent=2, default=str))
    headers = ["model", "params", "params ×", "size MB", "size ×", "perplexity", "Δ ppl %"] + \
        (["OOD ppl", "OOD Δ %"] if ood else []) + ["b1 tok/s", "b1 ×", "b8 tok/s", "b8 ×", "peak RSS MB"]
    table = [[r["model"], r["params"], r["params_ratio"], r["size_mb"], r["size_ratio"], r["perplexity"],
              r["delta_ppl_pct"]] + ([r["ood_perplexity"], r["ood_delta_ppl_pct"]] if ood else []) +
             [r["b1_tok_s"], r["b1_speedup"], r["b8_tok_s"], r["b8_speedup"], r["peak_rss_mb"]] for r in rows]
    md = [f"# Structured pruning: {result['model']}, heads {result['heads']}, MLP {result['mlp']}, "
          f"recovery {result['recover_steps']} steps", "",
          f"Eval: {ev['max_tokens']} tokens of the {ev['data']} eval split (window 512, stride 256)"
          + (f"; OOD: {ev['max_tokens']} tokens of the fortunes test split, text the recovery never saw" if ood else "")
          + f". Decode: {ev['new_tokens']} new tokens, median of {ev['repeats']}, runner `{base['runner']}`, parent "
          f"and children measured in this run. Calibration: {result['calibration_samples']} windows of 256 tokens "
          f"(importance and the refit's input moments). Prune + recovery took {result['prune_and_recover_s'] / 60:.1f} min"
          + (f" (recovery: {rec.get('steps')} steps of distillation from the parent, batch "
             f"{rec.get('batch_size')} x {rec.get('seq_len')} tokens of the {ev['data']} train split, lr {rec.get('lr')}, "
             f"bf16 autocast {'on' if rec.get('bf16') else 'off'}, final loss {rec.get('train_loss')})"
             if rec else "") + ".", "",
          machine_summary(result["machine"]), f"Command: `{result['command']}`", "", markdown_table(headers, table)]
    (out / "pruning.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
