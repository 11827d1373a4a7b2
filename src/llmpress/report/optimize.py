"""The `optimize` report: report.md, report.html, pareto.png and optimize.json in one directory."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from llmpress.frontier import TARGETS
from llmpress.report.plots import scatter
from llmpress.report.tables import fmt, markdown_table

HEADERS = ["recipe", "artifact", "perplexity", "Δ ppl %", "MB on disk", "peak RSS MB", "b1 tok/s", "b8 tok/s",
           "b32 tok/s", "task score", "gate", "Pareto", "seconds"]


def _rows(result: Any) -> list[list[Any]]:
    rows = []
    for c in result.candidates:
        chosen = result.chosen is not None and c.artifact_id == result.chosen.artifact_id
        gate = "error" if c.error else ("pass" if c.passes_gate else "reject")
        rows.append([("**" + c.recipe + "** ← chosen") if chosen else c.recipe, c.artifact_id,
                     c.perplexity, c.delta_pct, c.mb_on_disk, c.peak_rss_mb, c.b1_tok_s, c.b8_tok_s, c.b32_tok_s,
                     getattr(c, "task_score", None), gate, "yes" if c.on_front else "", c.seconds])
    return rows


def table_rows(result: Any) -> list[list[str]]:
    """The result table as strings (for the CLI)."""
    return [[fmt(v) if not isinstance(v, str) else v.replace("**", "") for v in r] for r in _rows(result)]


def _plot(result: Any, path: Path) -> Path | None:
    key, _higher = TARGETS[result.config.target]
    ok = [c for c in result.candidates if c.error is None and getattr(c, key) is not None
          and not math.isnan(c.perplexity)]
    if not ok:
        return None
    front = [i for i, c in enumerate(ok) if c.on_front]
    chosen = next((i for i, c in enumerate(ok) if result.chosen and c.artifact_id == result.chosen.artifact_id), None)
    xlabel = {"b1_tok_s": "decode tok/s, batch 1 (higher is better)",
              "b32_tok_s": "decode tok/s, batch 32 (higher is better)",
              "peak_rss_mb": "peak RSS MB (lower is better)"}[key]
    return scatter([c.recipe for c in ok], [float(getattr(c, key)) for c in ok], [c.perplexity for c in ok],
                   [c.mb_on_disk for c in ok], path, xlabel=xlabel,
                   ylabel=f"perplexity on {result.config.data} (lower is better)",
                   title=f"optimize {result.config.model}: quality vs {result.config.target} "
                         f"(marker = size on disk)", front=front, highlight=chosen)


def _summary(result: Any) -> list[str]:
    cfg = result.config
    b = result.baseline
    lines = [f"Model `{cfg.model}`, data `{cfg.data}` (eval split, {cfg.max_tokens} tokens), target "
             f"**{cfg.target}**, quality gate "
             + (f"on task `{cfg.task}`: score drop ≤ {cfg.max_quality_drop:g} points (baseline {fmt(b.task_score)})."
                if getattr(cfg, "task", None) else f"Δ perplexity ≤ {cfg.max_quality_drop:g} %."),
             f"Baseline perplexity {b.perplexity:.3f}, b1 {fmt(b.b1_tok_s)} tok/s, {fmt(b.mb_on_disk)} MB. "
             f"Speed: decode tok/s (median of {cfg.repeats}, {cfg.new_tokens} new tokens, through the llmpress engine "
             f"when it serves the model, else the lean loop), "
             f"run took {result.seconds / 60:.1f} min."]
    if result.chosen:
        c = result.chosen
        lines.append(f"**Chosen: `{c.recipe}`** → artifact `{c.artifact_id}` ({c.name}): perplexity "
                     f"{c.perplexity:.3f} ({c.delta_pct:+.2f} %), b1 {fmt(c.b1_tok_s)} tok/s, "
                     f"{fmt(c.mb_on_disk)} MB. Serve it: `llmpress serve {c.artifact_id}`")
    else:
        lines.append("**No candidate passed the quality gate**; relax `--max-quality-drop` or add recipes.")
    rejected = [c for c in result.candidates if not c.passes_gate and c.error is None]
    if rejected:
        lines.append("Rejected by the gate: " + ", ".join(f"`{c.recipe}` ({c.delta_pct:+.2f} %)" for c in rejected))
    errors = [c for c in result.candidates if c.error]
    for c in errors:
        lines.append(f"Failed: `{c.recipe}`: {c.error}")
    return lines


def write_report(result: Any, out_dir: Path) -> dict[str, Path]:
    from llmpress.hardware import machine_info, machine_summary

    # its speeds belong to this CPU: the report says which (read before any file here is written, so a
    # report inside a git checkout is not marked +dirty by its own files)
    machine = machine_info()
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    plot = _plot(result, out_dir / "pareto.png")
    if plot:
        files["plot"] = plot
    rows = _rows(result)
    md = ["# llmpress optimize", "", machine_summary(machine) + "\n", *[line + "\n" for line in _summary(result)], "",
          markdown_table(HEADERS, rows), ""]
    if plot:
        md.append("![quality vs speed](pareto.png)\n")
    files["markdown"] = out_dir / "report.md"
    files["markdown"].write_text("\n".join(md))
    files["html"] = out_dir / "report.html"
    files["html"].write_text(_html(result, rows, plot is not None))
    files["json"] = out_dir / "optimize.json"
    files["json"].write_text(json.dumps(result.to_dict() | {"machine": machine,
                                                            "files": {k: str(v) for k, v in files.items()}},
                                        indent=2, default=str))
    return files


def _html(result: Any, rows: list[list[Any]], has_plot: bool) -> str:
    def cell(v: Any) -> str:
        s = v if isinstance(v, str) else fmt(v)
        bold = s.startswith("**")
        s = html.escape(s.replace("**", ""))
        return f"<td><b>{s}</b></td>" if bold else f"<td>{s}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = "\n".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    paras = "\n".join(f"<p>{html.escape(line).replace('**', '')}</p>" for line in _summary(result))
    img = '<img src="pareto.png" alt="quality vs speed" style="max-width:100%">' if has_plot else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>llmpress optimize</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}</style></head>
<body><h1>llmpress optimize</h1>
{paras}
<table><tr>{head}</tr>
{body}
</table>
{img}
</body></html>
"""
