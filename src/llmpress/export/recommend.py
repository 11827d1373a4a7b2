"""`export --recommend`: the measured best format for a memory budget and a quality bound.

Candidates are the registry's export artifacts that have been evaluated (`llmpress eval`, or
`llmpress export` without `--no-eval`) and their sources (the model inside llmpress). Memory
is the measured peak RSS of the speed run; quality drop the measured Δ perplexity vs the source
on the same windows. Among those within both bounds the fastest batch-1 decode wins (ties: the
smaller file); nothing is estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmpress.errors import ConfigError, NotFoundError


@dataclass
class Candidate:
    id: str
    name: str
    format: str
    precision: str
    source: str
    mb_on_disk: float | None
    peak_rss_mb: float | None
    b1_tok_s: float | None
    delta_ppl_pct: float | None
    fits: bool = False
    why: str = ""


def _row(r: Any, fmt: str, precision: str, source: str, delta: float | None) -> Candidate:
    m = r.metrics or {}
    s, z = m.get("speed") or {}, m.get("size") or {}
    b1 = ((s.get("decode") or {}).get("b1") or {}).get("tok_s", {}).get("median")
    return Candidate(r.id, r.name, fmt, precision, source, z.get("mb_on_disk"), s.get("peak_rss_mb"), b1, delta)


def candidates(model: str | None = None) -> list[Candidate]:
    """Evaluated exports (and their evaluated sources) in the registry, optionally of one source model."""
    from llmpress.registry import get_registry

    reg = get_registry()
    rows = reg.list()
    by_id = {r.id: r for r in rows}
    src_filter = None
    if model:
        src_filter = reg.get(model).id
    out: list[Candidate] = []
    sources: set[str] = set()
    for r in rows:
        if r.step_name != "export" or (src_filter and r.parent_id != src_filter):
            continue
        q = (r.metrics or {}).get("quality") or {}
        params = r.step_params or {}
        out.append(_row(r, r.format, str(params.get("precision", "?")), r.parent_id or "-", q.get("delta_ppl_pct")))
        if r.parent_id in by_id:
            sources.add(r.parent_id)
    for sid in sorted(sources):
        r = by_id[sid]
        out.append(_row(r, "llmpress", "as stored", sid, 0.0))
    return out


def recommend(max_memory_mb: float, max_quality_drop: float, model: str | None = None) -> tuple[Candidate | None,
                                                                                                list[Candidate]]:
    """The best measured candidate within the bounds (None if none fits), and every candidate with why."""
    if max_memory_mb <= 0 or max_quality_drop < 0:
        raise ConfigError("--max-memory-mb must be > 0 and --max-quality-drop >= 0",
                          "e.g. --max-memory-mb 600 --max-quality-drop 5")
    cands = candidates(model)
    if not any(c.format != "llmpress" for c in cands):
        raise NotFoundError("no export in the registry has been evaluated yet",
                            "run `llmpress export MODEL --format ...` (it evaluates) or `llmpress eval EXPORT_ID`")
    for c in cands:
        if c.peak_rss_mb is None or c.b1_tok_s is None or c.delta_ppl_pct is None:
            c.why = "not measured (run `llmpress eval` on it)"
        elif c.peak_rss_mb > max_memory_mb:
            c.why = f"peak RSS {c.peak_rss_mb:.0f} MB > {max_memory_mb:.0f}"
        elif c.delta_ppl_pct > max_quality_drop:
            c.why = f"Δppl {c.delta_ppl_pct:+.2f} % > {max_quality_drop}"
        else:
            c.fits = True
            c.why = "fits"
    fits = sorted((c for c in cands if c.fits), key=lambda c: (-(c.b1_tok_s or 0), c.mb_on_disk or 0))
    return (fits[0] if fits else None), cands
