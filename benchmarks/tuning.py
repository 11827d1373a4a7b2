"""Fine-tuning methods on SmolLM2-135M: trainable %, peak RSS, steps/s, eval loss before/after.

Task: instruction pairs from the stdlib docs (`builtin:pydoc-instruct`: "Explain the Python
topic X" -> its first paragraph), loss on the answer only; deterministic split and seed.
Every method runs for the same number of optimizer steps in its own subprocess, so each
peak RSS (ru_maxrss of that process) is not polluted by another method's memory.
Checks the seeds' guidance: LoRA r=16 trains <= 2 % of the parameters, peaks at <= 60 % of
full fine-tuning's memory, and reaches an eval loss within 5 % of full's on the same steps.

    flock /tmp/llmpress-bench.lock .venv/bin/python benchmarks/tuning.py [--steps 60]

`--bf16 both` runs every method with bf16 autocast on and off (side by side: steps/s, peak RSS,
loss), which is how the bf16 default for CPUs without AMX was decided (llmpress.hardware).
Writes benchmarks/results/tuning/results<tag>.json and .md. Never asserts time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "tuning"
MODEL = "builtin:smollm2-135m"
DATA = "builtin:pydoc-instruct"
# Learning rates per method (the method defaults, LoRA/adapter raised for a short run).
METHODS: dict[str, dict] = {
    "full": {"lr": 5e-5, "params": {}},
    "lora": {"lr": 1e-3, "params": {"r": 16, "alpha": 32, "dropout": 0.05}},
    "adapter": {"lr": 1e-3, "params": {"reduction_factor": 16}},
    "prompt": {"lr": 3e-2, "params": {"num_virtual_tokens": 20, "init_text": "Explain the Python topic clearly."}},
}


def worker(method: str, steps: int, seq_len: int, batch: int, out: Path, checkpointing: bool = False,
           bf16: str = "auto", model: str = MODEL, max_eval: int | None = None) -> None:
    """Run one method in this (fresh) process and write its numbers to `out`."""
    from llmpress.sources import resolve
    from llmpress.tune.config import TrainConfig
    from llmpress.tune.run import tune_artifact
    from llmpress.tune.trainer import process_max_rss_bytes, rss_bytes

    base = resolve(model)
    spec = METHODS[method]
    t0 = time.perf_counter()
    art = tune_artifact(base, method, DATA, spec["params"],
                        TrainConfig(max_steps=steps, lr=spec["lr"], batch_size=batch, seq_len=seq_len,
                                    eval_every=steps, max_eval=max_eval, seed=0, gradient_checkpointing=checkpointing,
                                    bf16=bf16),
                        name=f"bench-{base.name}-{method}-bf16{bf16}")
    m = dict(art.manifest.metrics["tune"])
    m.update(artifact=art.id, wall_seconds=round(time.perf_counter() - t0, 1),
             process_max_rss_mb=round(process_max_rss_bytes() / 2**20, 1),
             rss_end_mb=round(rss_bytes() / 2**20, 1), artifact_mb=round(art.bytes_on_disk() / 2**20, 2))
    out.write_text(json.dumps(m, default=str))


def markdown(rows: dict[str, dict], checks: dict, args: argparse.Namespace, record: dict) -> str:
    from llmpress.hardware import machine_summary

    bf16 = sorted({"on" if r["bf16"] else "off" for r in rows.values()})
    lines = [f"# Fine-tuning {args.model} on {DATA}", "",
             f"{args.steps} optimizer steps, batch {args.batch}, seq len {args.seq_len}, seed 0, "
             f"bf16 autocast {' and '.join(bf16)} (--bf16 {args.bf16}), gradient checkpointing "
             f"{'on' if args.gradient_checkpointing else 'off'} (every method), eval loss on "
             f"{args.max_eval or 'all'} eval examples. Each method in its own "
             "process; peak RSS = that process's ru_maxrss.", "", machine_summary(record["machine"]),
             f"Command: `{record['command']}`", "",
             "| method | bf16 | lr | trainable params | trainable % | peak RSS (MB) | peak RSS vs full | steps/s | "
             "eval loss before | eval loss after | vs full | artifact MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        full = rows.get(name.replace(name.split(" ")[0], "full", 1))  # full at the same bf16 setting
        mem = f"{r['process_max_rss_mb'] / full['process_max_rss_mb']:.0%}" if full else "-"
        rel = f"{r['eval_loss_after'] / full['eval_loss_after'] - 1:+.1%}" if full else "-"
        lines.append(f"| {name.split(' ')[0]} | {'on' if r['bf16'] else 'off'} | {r['lr']:g} | "
                     f"{r['trainable_params']:,} | {r['trainable_pct']:.3f} | "
                     f"{r['process_max_rss_mb']:.0f} | {mem} | {r['steps_per_s']:.3f} | {r['eval_loss_before']:.3f} | "
                     f"{r['eval_loss_after']:.3f} | {rel} | {r['artifact_mb']:.1f} |")
    lines += ["", "## Seeds' guidance (LoRA r=16 vs full fine-tuning)", "",
              "| check | target | measured | met |", "|---|---|---:|---|"]
    for c in checks.values():
        lines.append(f"| {c['check']} | {c['target']} | {c['measured']} | {'yes' if c['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--gradient-checkpointing", action="store_true", help="for every method (fair memory comparison)")
    ap.add_argument("--tag", default="", help="suffix of the result files (results<tag>.json / .md)")
    ap.add_argument("--bf16", choices=("auto", "on", "off", "both"), default="auto",
                    help="bf16 autocast for training; both = every method twice, on and off")
    ap.add_argument("--model", default=MODEL, help="base model (builtin:tiny-llama for a smoke run)")
    ap.add_argument("--out", type=Path, default=OUT, help="result directory")
    ap.add_argument("--max-eval", type=int, default=None, help="cap on eval examples (default: the whole split)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.seq_len, args.batch, Path(args.worker_out), args.gradient_checkpointing,
               args.bf16, args.model, args.max_eval)
        return
    from llmpress.hardware import benchmark_record

    record = benchmark_record(sys.argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    settings = ["on", "off"] if args.bf16 == "both" else [args.bf16]
    for method, bf16 in [(m, b) for m in args.methods.split(",") for b in settings]:
        key = method if len(settings) == 1 else f"{method} bf16={bf16}"
        part = out / f"{method}{'' if len(settings) == 1 else '-bf16' + bf16}{args.tag}.json"
        print(f"[tuning] {key}: {args.steps} steps ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, "--worker", method, "--worker-out", str(part),
                        "--steps", str(args.steps), "--seq-len", str(args.seq_len), "--batch", str(args.batch),
                        "--bf16", bf16, "--model", args.model]
                       + (["--max-eval", str(args.max_eval)] if args.max_eval else [])
                       + (["--gradient-checkpointing"] if args.gradient_checkpointing else []),
                       check=True)
        rows[key] = r = json.loads(part.read_text())
        # each method's file is a result on its own too: it records the machine, as results.json does
        part.write_text(json.dumps({**record, **r}, indent=2, default=str))
        print(f"[tuning] {key}: {r['trainable_pct']:.3f}% trainable, peak {r['process_max_rss_mb']:.0f} MB, "
              f"{r['steps_per_s']:.3f} steps/s, eval loss {r['eval_loss_before']:.3f} -> {r['eval_loss_after']:.3f}",
              file=sys.stderr, flush=True)
    checks: dict[str, dict] = {}
    sfx = "" if len(settings) == 1 else f" bf16={settings[0]}"  # the seeds' checks at one setting
    if "lora" + sfx in rows:
        lo = rows["lora" + sfx]
        checks["trainable"] = {"check": "LoRA trainable share", "target": "<= 2 %",
                               "measured": f"{lo['trainable_pct']:.2f} %", "met": lo["trainable_pct"] <= 2.0}
        if "full" + sfx in rows:
            fu = rows["full" + sfx]
            mem = lo["process_max_rss_mb"] / fu["process_max_rss_mb"]
            loss = lo["eval_loss_after"] / fu["eval_loss_after"] - 1
            checks["memory"] = {"check": "LoRA peak RSS / full peak RSS", "target": "<= 60 %",
                                "measured": f"{mem:.0%} ({lo['process_max_rss_mb']:.0f} / {fu['process_max_rss_mb']:.0f} MB)",
                                "met": mem <= 0.60}
            checks["loss"] = {"check": "LoRA eval loss vs full, same steps", "target": "within 5 %",
                              "measured": f"{loss:+.1%} ({lo['eval_loss_after']:.3f} vs {fu['eval_loss_after']:.3f})",
                              "met": abs(loss) <= 0.05 or loss < 0}
    result = {**record, "model": args.model, "data": DATA, "bf16": args.bf16, "max_eval": args.max_eval,
              "steps": args.steps, "seq_len": args.seq_len, "batch": args.batch,
              "gradient_checkpointing": args.gradient_checkpointing, "methods": rows, "checks": checks}
    (out / f"results{args.tag}.json").write_text(json.dumps(result, indent=2, default=str))
    md = markdown(rows, checks, args, record)
    (out / f"results{args.tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
