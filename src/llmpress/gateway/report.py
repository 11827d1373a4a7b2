"""`llmpress cost report`: the cost ledger grouped by key, model, target, route or day -> table, CSV, JSON, PNG."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from llmpress.errors import ConfigError
from llmpress.registry.cost import NANO, RequestCostRow

GROUPS = ("key", "model", "target", "route", "day")


def _group_value(r: RequestCostRow, by: str) -> str:
    if by == "key":
        return r.key_id or "(no key)"
    if by == "day":
        return r.created_at.strftime("%Y-%m-%d") if r.created_at else "?"
    return str(getattr(r, by) or "(none)")


def aggregate(rows: list[RequestCostRow], by: str) -> list[dict[str, Any]]:
    """One dict per group: requests, errors, tokens in/out, cost (USD, exact sum of nano-USD), p50 latency."""
    if by not in GROUPS:
        raise ConfigError(f"cannot group cost by {by!r}", f"use one of {', '.join(GROUPS)}", param="by")
    groups: dict[str, list[RequestCostRow]] = defaultdict(list)
    for r in rows:
        groups[_group_value(r, by)].append(r)
    out = []
    for g, rs in sorted(groups.items()):
        nusd = sum(r.cost_nusd for r in rs)
        out.append({by: g, "requests": len(rs), "errors": sum(1 for r in rs if r.status != 200),
                    "tokens_in": sum(r.tokens_in for r in rs), "tokens_out": sum(r.tokens_out for r in rs),
                    "estimated_usage": sum(1 for r in rs if r.usage_source != "upstream"),
                    "cost_nusd": nusd, "cost_usd": nusd / NANO,
                    "latency_p50_ms": round(statistics.median(r.latency_ms for r in rs), 1)})
    return out


def write_report(table: list[dict[str, Any]], by: str, out_dir: Path, since: datetime | None = None) -> dict[str, Path]:
    """Write cost_by_<by>.csv / .json / .png into out_dir (each via a temp file, then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"cost_by_{by}"
    paths = {"csv": stem.with_suffix(".csv"), "json": stem.with_suffix(".json"), "png": stem.with_suffix(".png")}
    tmp = paths["csv"].with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        cols = [by, "requests", "errors", "tokens_in", "tokens_out", "estimated_usage", "cost_usd", "latency_p50_ms"]
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for row in table:
            w.writerow({**row, "cost_usd": f"{row['cost_usd']:.9f}"})
    tmp.replace(paths["csv"])
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"by": by, "since": since.isoformat() if since else None, "rows": table,
                               "total_usd": sum(r["cost_nusd"] for r in table) / NANO}, indent=2))
    tmp.replace(paths["json"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(table) + 3), 3.6))
    labels = [str(r[by]) for r in table]
    ax.bar(labels, [r["cost_usd"] for r in table], color="#4477aa")
    ax.set_ylabel("USD")
    ax.set_title(f"gateway cost by {by}")
    for i, r in enumerate(table):
        ax.annotate(f"${r['cost_usd']:.2f}\n{r['requests']} req", (i, r["cost_usd"]), ha="center", va="bottom",
                    fontsize=7)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    tmp = paths["png"].with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(paths["png"])
    return paths
