"""`bench`: the model-selection comparison — every model evaluated the same way in one run.

Writes `bench.json`, `report.md` and `bench.png` (quality vs speed, size as marker area).
Quality is compared in bits per byte, which stays comparable across tokenizers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmpress.frontier import pareto_front
from llmpress.report.plots import scatter
from llmpress.report.tables import markdown_table

COLUMNS = ["model", "id", "params (M)", "MB on disk", "perplexity", "bits/byte", "TTFT ms", "b1 tok/s",
           "b8 tok/s", "b32 tok/s", "load s", "peak RSS MB", "task score"]


def summary_row(name: str, art_id: str, m: dict[str, Any]) -> dict[str, Any]:
    """Flatten one model's metrics into the comparison row."""
    q, s, z = m.get("quality", {}), m.get("speed", {}), m.get("size", {})
    dec = s.get("decode", {})

    def tok(b: str) -> float | None:
        return dec.get(b, {}).get("tok_s", {}).get("median")

    ttft = s.get("ttft_s", {}).get("median")
    return {
        "model": name, "id": art_id,
        "params (M)": z["params"] / 1e6 if "params" in z else None,
        "MB on disk": z.get("mb_on_disk"),
        "perplexity": q.get("perplexity"), "bits/byte": q.get("bits_per_byte"),
        "TTFT ms": ttft * 1000 if ttft is not None else None,
        "b1 tok/s": tok("b1"), "b8 tok/s": tok("b8"), "b32 tok/s": tok("b32"),
        "load s": s.get("load_s"), "peak RSS MB": s.get("peak_rss_mb"),
        "task score": (m.get("task") or {}).get("score"),
    }


@dataclass
class BenchResult:
    rows: list[dict[str, Any]]
    out_dir: Path
    report: Path
    plot: Path | None


def run_bench(specs: list[str], config: Any, out_dir: Path | None = None, progress: Any = None) -> BenchResult:
    """Resolve and evaluate every model with one EvalConfig, then write the report and plot."""
    from llmpress.evaluate import evaluate_artifact
    from llmpress.sources import resolve

    arts = [resolve(s) for s in specs]  # resolve all first: a bad name fails before any work
    out_dir = out_dir or Path("reports") / f"bench-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    rows = []
    for spec, art in zip(specs, arts, strict=True):
        metrics = evaluate_artifact(art, config, progress=progress)
        rows.append(summary_row(spec, art.id, metrics))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps({"config": _cfg_dict(config), "rows": rows}, indent=2,
                                                   default=str))
    plot = None
    speed_key = next((f"b{b} tok/s" for b in (1, 8, 32) if all(r.get(f"b{b} tok/s") for r in rows)), None)
    if speed_key and all(r.get("bits/byte") for r in rows):
        xs = [r[speed_key] for r in rows]
        ys = [r["bits/byte"] for r in rows]
        front = pareto_front(list(zip(xs, ys, strict=True)))
        plot = scatter([r["model"] for r in rows], xs, ys, [r["MB on disk"] or 1.0 for r in rows],
                       out_dir / "bench.png", xlabel=f"decode {speed_key} (higher is better)",
                       ylabel="bits per byte on eval text (lower is better)",
                       title="llmpress bench: quality vs speed (marker area = size on disk)", front=front)
    md = ["# llmpress bench", "",
          f"Data: `{config.data}` eval split, window {config.window}, stride {config.stride}; "
          f"speed runner `{config.speed_config.runner}`, prompt {config.speed_config.prompt_tokens} tokens, "
          f"{config.speed_config.new_tokens} new tokens (EOS ignored), median of {config.speed_config.repeats} "
          f"after {config.speed_config.warmup} warm-up.", "",
          markdown_table(COLUMNS, [[r[c] for c in COLUMNS] for r in rows])]
    if plot:
        md += ["", f"![quality vs speed]({plot.name})", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    return BenchResult(rows, out_dir, report, plot)


def _cfg_dict(config: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)
