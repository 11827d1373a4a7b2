"""The `optimize --search` report: report.md, report.html, pareto.png and search.json in one directory.

Takes the search result duck-typed (report imports nothing from plan)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from llmpress.report.plots import scatter
from llmpress.report.tables import fmt, markdown_table

HEADERS = ["recipe", "artifact", "rung", "status", "proxy Δppl %", "MB on disk", "perplexity", "Δ ppl %",
           "task score", "b1 tok/s", "peak RSS MB", "Pareto", "seconds", "reason"]


def rows(result: Any) -> list[list[Any]]:
    out = []
    for c in [result.baseline, *result.candidates]:
        out.append([c.recipe, c.artifact_id, c.rung if c.rung >= 0 else "—", c.status, c.proxy_delta_pct,
                    c.mb_on_disk, c.perplexity, c.delta_pct, c.task_score, c.b1_tok_s, c.peak_rss_mb,
                    "yes" if c.on_front else "", c.seconds, c.reason])
    return out


def _plot(result: Any, path: Path) -> Path | None:
    full = [c for c in [result.baseline, *result.candidates] if c.rung == 1 and c.b1_tok_s is not None]
    if not full:
        return None
    task = result.config.task
    y = [c.task_score if task and c.task_score is not None else c.perplexity for c in full]
    front = [i for i, c in enumerate(full) if c.on_front]
    win = next((i for i, c in enumerate(full) if c is result.winner), None)
    return scatter([c.recipe for c in full], [c.b1_tok_s for c in full], y,
                   [c.peak_rss_mb or c.mb_on_disk or 1.0 for c in full], path,
                   xlabel="decode tok/s, batch 1 (higher is better)",
                   ylabel=f"task score on {task} (higher is better)" if task
                   else f"perplexity on {result.config.data} (lower is better)",
                   title="search: fully measured candidates (marker area = peak RSS; front on quality, speed, memory)", front=front, highlight=win)


def _space_lines(result: Any) -> list[str]:
    axes = result.config.space.axes()
    lines = [f"- **{k}**: {', '.join(str(v) for v in vs)}" for k, vs in axes.items()]
    n = len(result.candidates)
    built = sum(1 for c in result.candidates if c.rung >= 0)
    full = sum(1 for c in result.candidates if c.rung == 1)
    lines.append(f"- {n} recipes in the space: {built} built and proxy-measured (rung 0), {full} measured fully "
                 f"(rung 1), {n - built} not explored within the budget or failed")
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
    cfg = result.config
    b = result.baseline
    head = [f"Model `{cfg.model}`, data `{cfg.data}`" + (f", task `{cfg.task}`" if cfg.task else "")
            + f"; budget {cfg.budget_minutes:g} min (used {result.seconds / 60:.1f}); eta {cfg.eta}; proxy: "
            f"perplexity on {cfg.proxy_tokens} tokens, gate {cfg.proxy_gate():g} %.",
            f"Baseline: perplexity {fmt(b.perplexity)}, b1 {fmt(b.b1_tok_s)} tok/s, peak RSS {fmt(b.peak_rss_mb)} MB"
            + (f", task score {fmt(b.task_score)}" if b.task_score is not None else "") + "."]
    front = [c.recipe for c in [b, *result.candidates] if c.on_front]
    md = ["# llmpress optimize --search", "", machine_summary(machine) + "\n", *[line + "\n" for line in head],
          "## Explored space", "", *_space_lines(result), "",
          "## Why the winner won", "", *[f"- {w}" for w in result.why], "",
          "## Pareto front (quality, speed, memory)", "", ", ".join(f"`{r}`" for r in front) or "—", "",
          "## Candidates", "", markdown_table(HEADERS, rows(result)), ""]
    if result.winner:
        md.append(f"Serve it: `llmpress serve {result.winner.artifact_id}`\n")
    if plot:
        md.append("![quality vs speed](pareto.png)\n")
    files["markdown"] = out_dir / "report.md"
    files["markdown"].write_text("\n".join(md))
    files["html"] = out_dir / "report.html"
    files["html"].write_text(_html(result, plot is not None))
    files["json"] = out_dir / "search.json"
    files["json"].write_text(json.dumps(result.to_dict() | {"machine": machine,
                                                            "files": {k: str(v) for k, v in files.items()}},
                                        indent=2, default=str))
    return files


def _html(result: Any, has_plot: bool) -> str:
    def cell(v: Any) -> str:
        return f"<td>{html.escape(v if isinstance(v, str) else fmt(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = "\n".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows(result))
    why = "".join(f"<li>{html.escape(w)}</li>" for w in result.why)
    space = "".join(f"<li>{html.escape(s[2:]).replace('**', '')}</li>" for s in _space_lines(result))
    img = '<img src="pareto.png" alt="quality vs speed" style="max-width:100%">' if has_plot else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>llmpress optimize --search</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}</style></head>
<body><h1>llmpress optimize --search</h1>
<h2>Explored space</h2><ul>{space}</ul>
<h2>Why the winner won</h2><ul>{why}</ul>
<h2>Candidates</h2>
<table><tr>{head}</tr>
{body}
</table>
{img}
</body></html>
"""
