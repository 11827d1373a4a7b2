"""`optimize`: apply a set of recipes, evaluate everything the same way, keep what passes.

The closed loop: baseline and every recipe result are measured on the same corpus with the
same speed settings in one run; candidates outside the quality gate are rejected; the best
remaining one on the target (latency, throughput or memory) is chosen; the Pareto front of
quality vs the target is reported (report.md, report.html, pareto.png, optimize.json).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmpress.errors import ConfigError, LlmpressError
from llmpress.plan.pareto import TARGETS, Candidate, choose, mark_front
from llmpress.plan.recipes import RecipeContext, parse_recipe, run_recipe

# Every scheme once; int4 at group 64 both round-to-nearest and GPTQ-calibrated, QAT at the same group.
# int4 at group 32 (+0.07 % perplexity on SmolLM2 and faster than int8), structured pruning with
# recovery, and distillation into half the layers join them.
DEFAULT_RECIPES = ("fp16", "bf16", "int8-dynamic", "int8-weight-only", "int8-static",
                   "int4-weight-only:g32", "int4-weight-only:g64", "int4-weight-only:g64,gptq", "qat:g64",
                   "prune:structured-25%,recover-100", "distill:layers-50%,steps-100")


@dataclass
class OptimizeConfig:
    model: str = "builtin:smollm2-135m"
    data: str = "builtin:pydoc"
    max_quality_drop: float = 2.0  # percent of baseline perplexity
    target: str = "latency"
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    out_dir: Path | None = None
    max_tokens: int = 4096
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    new_tokens: int = 16
    repeats: int = 2
    calibration_samples: int = 64
    qat_steps: int = 40  # ~2-3 min on 2 cores; 60 steps measured Δppl +6.2 % vs +34.8 % for RTN int4 g64
    task: str | None = None  # judge on this task (evaluate.task): the gate is then its score drop in points
    task_limit: int | None = None

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}", f"use one of {', '.join(TARGETS)}", param="target")
        if not self.recipes:
            raise ConfigError("no recipes given", "pass --recipes int8-weight-only,int4-weight-only:g64")
        for r in self.recipes:
            parse_recipe(r)
        if self.max_tokens is not None and self.max_tokens < 64:
            raise ConfigError(f"--max-tokens {self.max_tokens} is too small to judge quality", "use 2048 or more")


@dataclass
class OptimizeResult:
    config: OptimizeConfig
    baseline: Candidate
    candidates: list[Candidate]
    chosen: Candidate | None
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        cfg = asdict(self.config)
        cfg["out_dir"] = str(self.out_dir)
        return {"config": cfg, "baseline": asdict(self.baseline),
                "candidates": [asdict(c) for c in self.candidates],
                "chosen": asdict(self.chosen) if self.chosen else None,
                "serve": f"llmpress serve {self.chosen.artifact_id}" if self.chosen else None,
                "files": {k: str(v) for k, v in self.files.items()}, "seconds": self.seconds}


def _candidate(recipe: str, art: Any, m: dict[str, Any], base_ppl: float | None, seconds: float) -> Candidate:
    q, s, z = m.get("quality", {}), m.get("speed", {}), m.get("size", {})
    dec = s.get("decode", {})

    def tok(b: str) -> float | None:
        return dec.get(b, {}).get("tok_s", {}).get("median")

    ppl = float(q["perplexity"])
    task = m.get("task") or {}
    return Candidate(recipe=recipe, artifact_id=art.id, name=art.name, perplexity=ppl,
                     delta_pct=0.0 if base_ppl is None else (ppl / base_ppl - 1.0) * 100.0,
                     mb_on_disk=float(z.get("mb_on_disk", art.bytes_on_disk() / 1e6)),
                     peak_rss_mb=s.get("peak_rss_mb"), b1_tok_s=tok("b1"), b8_tok_s=tok("b8"), b32_tok_s=tok("b32"),
                     seconds=seconds, metrics=m, task_score=task.get("score"))


def _task_drops(cands: list[Candidate]) -> None:
    """Task-score drop vs the baseline (first candidate), in points of accuracy."""
    base = cands[0].task_score
    for c in cands:
        if base is not None and c.task_score is not None:
            c.task_drop_pts = (base - c.task_score) * 100.0


def default_out_dir() -> Path:
    from llmpress.artifact import home

    return home() / "reports" / ("optimize-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))


def optimize(config: OptimizeConfig, progress: Any = None) -> OptimizeResult:
    """Run the loop and write the report; a recipe that fails is reported, not fatal."""
    from llmpress.evaluate import EvalConfig, SpeedConfig, evaluate_artifact
    from llmpress.report.optimize import write_report
    from llmpress.sources import resolve

    t_start = time.perf_counter()
    config.validate()
    out_dir = Path(config.out_dir) if config.out_dir else default_out_dir()
    source = resolve(config.model)
    eval_cfg = EvalConfig(data=config.data, max_tokens=config.max_tokens, task=config.task, task_limit=config.task_limit,
                          speed_config=SpeedConfig(batch_sizes=tuple(config.batch_sizes),
                                                   new_tokens=config.new_tokens, repeats=config.repeats))
    ctx = RecipeContext(data=config.data, calibration_samples=config.calibration_samples,
                        qat_steps=config.qat_steps, progress=progress)
    overall = progress.add_task("optimize", total=1 + len(config.recipes)) if progress is not None else None
    t0 = time.perf_counter()
    base_m = evaluate_artifact(source, eval_cfg, progress=progress)
    baseline = _candidate("baseline", source, base_m, None, time.perf_counter() - t0)
    if overall is not None:
        progress.advance(overall)
    cands = [baseline]
    for recipe in config.recipes:
        t0 = time.perf_counter()
        if overall is not None:
            progress.update(overall, description=f"optimize: {recipe}")
        try:
            art = run_recipe(recipe, source, ctx)
            m = evaluate_artifact(art, eval_cfg, progress=progress)
            cands.append(_candidate(recipe, art, m, baseline.perplexity, time.perf_counter() - t0))
        except LlmpressError as e:
            cands.append(Candidate(recipe=recipe, artifact_id="-", name="-", perplexity=float("nan"),
                                   delta_pct=float("nan"), mb_on_disk=float("nan"), error=e.one_line(),
                                   seconds=time.perf_counter() - t0))
        if overall is not None:
            progress.advance(overall)
    if config.task:
        _task_drops(cands)
    chosen = choose(cands, config.target, config.max_quality_drop, on_task=bool(config.task))
    mark_front(cands, config.target)
    result = OptimizeResult(config, baseline, cands, chosen, out_dir)
    result.seconds = time.perf_counter() - t_start
    result.files = write_report(result, out_dir)
    return result
