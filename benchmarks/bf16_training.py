"""bf16 autocast on vs off for CPU training, interleaved in one process: steps/s and peak RSS.

Blocks of LoRA (or full) training steps alternate fp32 / bf16 autocast on the same model, data
and optimizer, so a machine whose load changes during the run (shared CI runners) slows both
settings alike; peak RSS is per block (VmHWM reset through /proc/self/clear_refs). This decides
`llmpress.hardware.cpu_has_bf16` (the default of `--bf16 auto` for tune and distill) per CPU
family; benchmarks/tuning.py --bf16 both measures whole runs per method instead.

    .venv/bin/python benchmarks/bf16_training.py [--model builtin:smollm2-135m --steps 4 --blocks 2]

Writes benchmarks/results/bf16_training.json and .md. Never asserts time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--method", choices=("lora", "full"), default="lora")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per block")
    ap.add_argument("--blocks", type=int, default=2, help="fp32 / bf16 block pairs")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    import torch

    from llmpress.data import load_corpus
    from llmpress.data.windows import calibration_windows
    from llmpress.hardware import benchmark_record, cpu_flags, machine_summary
    from llmpress.sources import resolve
    from llmpress.tune import get_method
    from llmpress.tune.config import config_from_dict

    record = benchmark_record(sys.argv)
    torch.manual_seed(0)
    base = resolve(args.model)
    tok = base.load_tokenizer()
    model = base.load_model(dtype=torch.float32)
    method = get_method(args.method)
    cfg = config_from_dict(method.config, {})
    model = method.prepare(model, cfg, str(base.path))
    model.train()
    x = calibration_windows(tok, load_corpus("builtin:pydoc").train, args.batch, args.seq_len)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    step(False)  # warm-up: allocator, optimizer state
    step(True)
    blocks: list[dict[str, Any]] = []
    for b in range(args.blocks):
        for bf16 in (False, True):
            can_reset = reset_peak_rss()
            times = [step(bf16) for _ in range(args.steps)]
            blocks.append({"block": b, "bf16": bf16, "step_s": times, "peak_rss_mb": peak_rss_mb() if can_reset
                           else None})
            print(f"[bf16] block {b} bf16={'on' if bf16 else 'off'}: median {statistics.median(times):.2f} s/step",
                  file=sys.stderr, flush=True)
    summary = {}
    for bf16 in (False, True):
        times = [t for bl in blocks if bl["bf16"] == bf16 for t in bl["step_s"]]
        rss = [bl["peak_rss_mb"] for bl in blocks if bl["bf16"] == bf16 and bl["peak_rss_mb"] is not None]
        summary["on" if bf16 else "off"] = {"steps_per_s": 1 / statistics.median(times), "median_step_s":
                                            statistics.median(times), "min_step_s": min(times),
                                            "peak_rss_mb": max(rss) if rss else None}
    speedup = summary["on"]["steps_per_s"] / summary["off"]["steps_per_s"]
    flags = cpu_flags() or set()
    result = {**record, "model": args.model, "method": args.method, "steps_per_block": args.steps,
              "blocks": args.blocks, "seq_len": args.seq_len, "batch": args.batch,
              "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
              "summary": summary, "bf16_speedup": speedup, "detail": blocks}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bf16_training.json").write_text(json.dumps(result, indent=2))
    md = [f"# bf16 autocast vs fp32 training: {args.model}, {args.method}", "",
          f"{args.blocks} interleaved block pairs of {args.steps} steps, batch {args.batch} x {args.seq_len} tokens, "
          "AdamW; median step time over all blocks of a setting; peak RSS per block (max).", "",
          machine_summary(record["machine"]), f"Command: `{record['command']}`", "",
          "| autocast | steps/s | median s/step | min s/step | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for k, s in summary.items():
        md.append(f"| bf16 {k} | {s['steps_per_s']:.3f} | {s['median_step_s']:.2f} | {s['min_step_s']:.2f} | "
                  f"{s['peak_rss_mb'] or float('nan'):.0f} |")
    md += ["", f"bf16 / fp32 steps/s: {speedup:.2f}x"]
    (args.out / "bf16_training.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
