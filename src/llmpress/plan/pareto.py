"""Choosing among candidates: Pareto front of quality vs a speed/memory target, under a quality gate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmpress.errors import ConfigError
from llmpress.frontier import TARGETS, pareto_front

__all__ = ["TARGETS", "Candidate", "parse_quality_drop", "mark_front", "choose"]

@dataclass
class Candidate:
    recipe: str
    artifact_id: str
    name: str
    perplexity: float
    delta_pct: float
    mb_on_disk: float
    peak_rss_mb: float | None = None
    b1_tok_s: float | None = None
    b8_tok_s: float | None = None
    b32_tok_s: float | None = None
    seconds: float = 0.0
    passes_gate: bool = False
    on_front: bool = False
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    task_score: float | None = None  # with --task: the task's primary score, and its drop vs the baseline
    task_drop_pts: float | None = None

    def target_value(self, target: str) -> float | None:
        return getattr(self, TARGETS[target][0])


def parse_quality_drop(text: str) -> float:
    """'2%' / '2' / '0.5 %' -> 2.0 (percent of perplexity)."""
    s = str(text).strip().rstrip("%").strip()
    try:
        v = float(s)
    except ValueError as e:
        raise ConfigError(f"--max-quality-drop {text!r} is not a percentage", "e.g. --max-quality-drop 2%") from e
    if not 0 <= v <= 1000:
        raise ConfigError(f"--max-quality-drop {text!r} is out of range", "use a value between 0% and 1000%")
    return v


def mark_front(cands: list[Candidate], target: str) -> list[int]:
    """Mark candidates on the front of (target metric, perplexity); returns their indices."""
    key, higher = TARGETS[target]
    ok = [i for i, c in enumerate(cands) if c.error is None and getattr(c, key) is not None]
    pts = [(getattr(cands[i], key), cands[i].perplexity) for i in ok]
    front = [ok[j] for j in pareto_front(pts, higher_x=higher, lower_y=True)]
    for i in front:
        cands[i].on_front = True
    return front


def choose(cands: list[Candidate], target: str, max_drop_pct: float, on_task: bool = False) -> Candidate | None:
    """Best on the target among those within the quality gate (ties -> lower perplexity).
    `on_task`: the gate is the task-score drop in points instead of the perplexity change."""
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}", f"use one of {', '.join(TARGETS)}")
    key, higher = TARGETS[target]
    for c in cands:
        drop = (c.task_drop_pts if c.task_drop_pts is not None else float("inf")) if on_task else c.delta_pct
        c.passes_gate = c.error is None and drop <= max_drop_pct
    ok = [c for c in cands if c.passes_gate and getattr(c, key) is not None]
    if not ok:
        return None
    sign = 1.0 if higher else -1.0
    return max(ok, key=lambda c: (sign * getattr(c, key), -c.perplexity))
