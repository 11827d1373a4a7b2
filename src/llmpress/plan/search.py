"""`optimize --search`: successive halving over a recipe space under a time budget.

The space is scheme x group size x GPTQ or not x structured prune amount x recovery steps x
distillation into fewer layers. Rung 0 builds candidates cheapest first (every one an artifact
whose parent chain records how it was made; shared prefixes such as a pruned model are built
once) and judges them by a cheap proxy: perplexity on a few windows and size on disk. Those
within a loosened quality gate are ranked by size (CPU decode is memory-bound, so smaller
weights predict faster decode) and the best 1/eta survive to rung 1, where they are measured
fully (perplexity on the full eval tokens, the task when given, speed and peak RSS in a fresh
process). The winner is the fastest fully measured candidate inside every constraint.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any

from llmpress.errors import ConfigError, LlmpressError

__all__ = ["SearchSpace", "SearchConfig", "SearchCandidate", "SearchResult", "parse_space", "search",
           "BudgetError", "pareto_front_nd"]


class BudgetError(ConfigError):
    """The time budget cannot cover even the baseline measurement."""


@dataclass
class SearchSpace:
    """The axes of the recipe space. 0 on prune / distill means "not applied"."""

    schemes: tuple[str, ...] = ("none", "int8-weight-only", "int4-weight-only")
    group_sizes: tuple[int, ...] = (32, 64)
    gptq: tuple[bool, ...] = (False, True)
    prune: tuple[float, ...] = (0.0, 0.25)  # fraction of heads and MLP neurons removed (structured)
    recover_steps: tuple[int, ...] = (0, 50)  # distillation steps from the parent after pruning
    distill_layers: tuple[float, ...] = (0.0, 0.5)  # fraction of layers the distilled student keeps
    distill_steps: int = 100

    def structural(self) -> list[str]:
        out = [""]
        for p in sorted(x for x in set(self.prune) if x > 0):
            for r in sorted(set(self.recover_steps)):
                out.append(f"prune:structured-{p * 100:g}%" + (f",recover-{r}" if r else ""))
        for d in sorted(x for x in set(self.distill_layers) if x > 0):
            out.append(f"distill:layers-{d * 100:g}%,steps-{self.distill_steps}")
        return out

    def quantizations(self) -> list[str]:
        out: list[str] = []
        for s in self.schemes:
            if s == "none":
                out.append("")
            elif s == "int4-weight-only":
                out += [f"int4-weight-only:g{g}" + (",gptq" if q else "")
                        for g, q in product(sorted(set(self.group_sizes)), sorted(set(self.gptq)))]
            else:
                out.append(s)
        return out

    def recipes(self) -> list[str]:
        """Every point of the space except the untouched model (the baseline is measured anyway)."""
        rs = ["+".join(p for p in (a, b) if p) for a, b in product(self.structural(), self.quantizations())]
        return list(dict.fromkeys(r for r in rs if r))

    def axes(self) -> dict[str, list[Any]]:
        return {"scheme": list(self.schemes), "group size (int4)": list(self.group_sizes),
                "GPTQ": ["yes" if g else "no" for g in self.gptq],
                "structured prune": [f"{p:.0%}" for p in self.prune], "recovery steps": list(self.recover_steps),
                "distil into layers": [f"{d:.0%}" if d else "no" for d in self.distill_layers]}


def _fraction(tok: str, key: str) -> float:
    t = tok.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError as e:
        raise ConfigError(f"--space {key}: {tok!r} is not a fraction", f"write e.g. {key}=0,25%") from e
    if not 0 <= v < 1:
        raise ConfigError(f"--space {key}: {tok!r} is outside [0, 1)", f"write e.g. {key}=0,25%")
    return v


def parse_space(text: str | None) -> SearchSpace:
    """`schemes=int8-weight-only,int4-weight-only;groups=32;gptq=no,yes;prune=0,25%;recover=0,50;
    distill=0,50%;distill-steps=100` -> SearchSpace; axes left out keep their defaults."""
    sp = SearchSpace()
    if not text:
        return sp
    for part in (p.strip() for p in text.split(";") if p.strip()):
        key, sep, val = part.partition("=")
        key = key.strip()
        vals = [v.strip() for v in val.split(",") if v.strip()]
        if not sep or not vals:
            raise ConfigError(f"--space part {part!r} is not key=v1,v2", "e.g. --space 'groups=32,64;gptq=no'")
        try:
            if key == "schemes":
                from llmpress.compress.quantize import scheme_names

                known = {"none", *scheme_names()}
                bad = [v for v in vals if v not in known]
                if bad:
                    raise ConfigError(f"--space schemes: unknown scheme {bad[0]!r}", f"use: {', '.join(sorted(known))}")
                sp.schemes = tuple(vals)
            elif key in ("groups", "group_sizes"):
                sp.group_sizes = tuple(int(v) for v in vals)
            elif key == "gptq":
                if any(v not in ("yes", "no", "true", "false") for v in vals):
                    raise ConfigError(f"--space gptq={val!r}", "write gptq=no,yes")
                sp.gptq = tuple(v in ("yes", "true") for v in vals)
            elif key == "prune":
                sp.prune = tuple(_fraction(v, key) for v in vals)
            elif key == "recover":
                sp.recover_steps = tuple(int(v) for v in vals)
            elif key == "distill":
                sp.distill_layers = tuple(_fraction(v, key) for v in vals)
            elif key == "distill-steps":
                sp.distill_steps = int(vals[0])
            else:
                raise ConfigError(f"--space has no axis {key!r}",
                                  "use schemes, groups, gptq, prune, recover, distill, distill-steps")
        except ValueError as e:
            raise ConfigError(f"--space {key}={val!r} needs integers", f"e.g. {key}=0,50") from e
    if any(g < 1 for g in sp.group_sizes) or any(r < 0 for r in sp.recover_steps) or sp.distill_steps < 1:
        raise ConfigError("--space group sizes and steps must be positive", "e.g. groups=32,64;recover=0,50")
    if not sp.recipes():
        raise ConfigError("--space leaves nothing to try besides the baseline", "add a scheme, prune or distill value")
    return sp


@dataclass
class SearchConfig:
    model: str = "builtin:smollm2-135m"
    data: str = "builtin:pydoc"
    task: str | None = None
    task_limit: int | None = None
    budget_minutes: float = 30.0
    max_quality_drop: float = 2.0  # % of baseline perplexity, or task-score points with a task
    max_memory_mb: float | None = None  # peak RSS of the speed run
    min_tok_s: float | None = None  # decode tok/s at batch 1
    space: SearchSpace = field(default_factory=SearchSpace)
    eta: int = 3  # keep 1/eta of the rung-0 candidates that pass the proxy gate
    proxy_tokens: int = 512  # perplexity tokens of the cheap proxy
    proxy_gate_pct: float | None = None  # proxy Δppl allowed; default 2 x gate + 1 (20 with a task)
    max_tokens: int = 4096
    batch_sizes: tuple[int, ...] = (1, 8)
    new_tokens: int = 16
    repeats: int = 2
    calibration_samples: int = 64
    out_dir: Path | None = None

    def validate(self) -> SearchConfig:
        if not self.budget_minutes > 0:
            raise BudgetError(f"--budget-minutes {self.budget_minutes:g} leaves no time to measure anything",
                              "pass a positive budget, e.g. --budget-minutes 30")
        if self.eta < 2:
            raise ConfigError(f"--eta {self.eta} keeps every candidate", "use 2 or more (3 keeps a third per rung)")
        if self.proxy_tokens < 64 or self.max_tokens < self.proxy_tokens:
            raise ConfigError(f"proxy tokens {self.proxy_tokens} / max tokens {self.max_tokens} are inconsistent",
                              "need 64 <= proxy tokens <= --max-tokens")
        if self.max_memory_mb is not None and self.max_memory_mb <= 0:
            raise ConfigError("--max-memory-mb must be positive", "e.g. --max-memory-mb 800")
        if self.min_tok_s is not None and self.min_tok_s < 0:
            raise ConfigError("--min-tok-s must be >= 0", "e.g. --min-tok-s 20")
        if 1 not in self.batch_sizes:
            raise ConfigError("the search ranks by batch-1 decode speed", "include 1 in --batch-sizes")
        return self

    def proxy_gate(self) -> float:
        if self.proxy_gate_pct is not None:
            return self.proxy_gate_pct
        return 20.0 if self.task else 2.0 * self.max_quality_drop + 1.0


@dataclass
class SearchCandidate:
    recipe: str
    artifact_id: str = "-"
    name: str = "-"
    rung: int = -1  # -1 not built, 0 proxy measured, 1 measured fully
    status: str = "not explored"  # not explored | pruned | measured | rejected | winner | error
    reason: str = ""
    cost_class: str = ""
    proxy_perplexity: float | None = None
    proxy_delta_pct: float | None = None
    mb_on_disk: float | None = None
    perplexity: float | None = None
    delta_pct: float | None = None
    task_score: float | None = None
    task_drop_pts: float | None = None
    b1_tok_s: float | None = None
    b8_tok_s: float | None = None
    ttft_ms: float | None = None
    peak_rss_mb: float | None = None
    seconds: float = 0.0
    passes: bool = False
    on_front: bool = False

    def quality_drop(self) -> float | None:
        return self.task_drop_pts if self.task_drop_pts is not None else self.delta_pct


@dataclass
class SearchResult:
    config: SearchConfig
    baseline: SearchCandidate
    candidates: list[SearchCandidate]
    winner: SearchCandidate | None
    why: list[str]
    out_dir: Path
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["out_dir"] = str(self.out_dir)
        return {"config": cfg, "space": self.config.space.axes(), "space_size": len(self.config.space.recipes()),
                "baseline": asdict(self.baseline), "candidates": [asdict(c) for c in self.candidates],
                "winner": asdict(self.winner) if self.winner else None, "why": self.why,
                "serve": f"llmpress serve {self.winner.artifact_id}" if self.winner else None,
                "files": {k: str(v) for k, v in self.files.items()}, "seconds": self.seconds}


def cost_class(recipe: str) -> str:
    """Rough build-cost class, used to order rung 0 cheapest first and to predict what still fits."""
    if "distill:" in recipe:
        return "distill"
    if "recover-" in recipe:
        return "prune+recover"
    if "prune:" in recipe:
        return "prune"
    if "gptq" in recipe:
        return "gptq"
    return "rtn"


# Build-time guesses in units of one baseline proxy evaluation, replaced by measurements as they come.
_COST_GUESS = {"rtn": 2.0, "gptq": 6.0, "prune": 6.0, "prune+recover": 15.0, "distill": 25.0}
_CLASS_ORDER = list(_COST_GUESS)


def pareto_front_nd(points: list[tuple[float, ...]]) -> list[int]:
    """Indices of points no other point dominates; every coordinate is "higher is better"."""
    def dom(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))

    return [i for i, p in enumerate(points) if not any(dom(q, p) for j, q in enumerate(points) if j != i)]


class _Clock:
    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget = budget_s

    def used(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.used()


def _proxy(art: Any, cfg: SearchConfig) -> dict[str, float]:
    """Perplexity on `proxy_tokens` eval tokens in windows spread over the full measurement's `max_tokens`
    (the first 512 tokens alone are one document: a pruned + recovered model scored -5 % there and +23 %
    on the full text), and size on disk."""
    from llmpress.data import load_corpus
    from llmpress.evaluate.quality import perplexity

    model, tok = art.load_model(), art.load_tokenizer()
    q = perplexity(model, tok, load_corpus(cfg.data).split("eval"), 256, 256, cfg.max_tokens,
                   sample_tokens=cfg.proxy_tokens)
    return {"perplexity": q["perplexity"], "mb_on_disk": art.bytes_on_disk() / 1e6}


def _build(recipe: str, source: Any, ctx: Any, cache: dict[str, Any]) -> Any:
    """Run a recipe step by step, reusing artifacts already built for the same prefix."""
    from llmpress.plan.recipes import parse_recipe, recipe_table

    table = recipe_table()
    art = source
    parts: list[str] = []
    for name, arg in parse_recipe(recipe):
        parts.append(name if arg is None else f"{name}:{arg}")
        key = "+".join(parts)
        if key not in cache:
            cache[key] = table[name].fn(art, arg, ctx)
        art = cache[key]
    return art


def _fill_full(c: SearchCandidate, m: dict[str, Any], base: SearchCandidate | None) -> None:
    q, s, z, t = m.get("quality", {}), m.get("speed", {}), m.get("size", {}), m.get("task")
    dec = s.get("decode", {})

    def tok(b: str) -> float | None:
        return dec.get(b, {}).get("tok_s", {}).get("median")

    c.perplexity = q.get("perplexity")
    c.b1_tok_s, c.b8_tok_s = tok("b1"), tok("b8")
    ttft = s.get("ttft_s", {}).get("median")
    c.ttft_ms = ttft * 1000 if ttft is not None else None
    c.peak_rss_mb = s.get("peak_rss_mb")
    c.mb_on_disk = z.get("mb_on_disk", c.mb_on_disk)
    if t:
        c.task_score = float(t["score"])
    if base is not None and base.perplexity and c.perplexity is not None:
        c.delta_pct = (c.perplexity / base.perplexity - 1.0) * 100.0
        if c.task_score is not None and base.task_score is not None:
            c.task_drop_pts = (base.task_score - c.task_score) * 100.0
    elif base is None:
        c.delta_pct = 0.0
        c.task_drop_pts = 0.0 if c.task_score is not None else None


def _constraints(c: SearchCandidate, cfg: SearchConfig) -> list[str]:
    """Why a fully measured candidate is outside the constraints (empty: inside all)."""
    why = []
    drop = c.quality_drop()
    unit = "task points" if cfg.task else "% perplexity"
    if drop is None or drop > cfg.max_quality_drop:
        why.append(f"quality drop {drop:+.2f} {unit} > {cfg.max_quality_drop:g}" if drop is not None
                   else "quality not measured")
    if cfg.max_memory_mb is not None and (c.peak_rss_mb or math.inf) > cfg.max_memory_mb:
        why.append(f"peak RSS {c.peak_rss_mb:.0f} MB > {cfg.max_memory_mb:g} MB")
    if cfg.min_tok_s is not None and (c.b1_tok_s or 0.0) < cfg.min_tok_s:
        why.append(f"b1 {c.b1_tok_s or 0:.1f} tok/s < {cfg.min_tok_s:g}")
    return why


def default_out_dir() -> Path:
    from llmpress.artifact import home

    return home() / "reports" / ("search-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))


def search(config: SearchConfig, progress: Any = None) -> SearchResult:
    """Run the successive-halving search within the budget and write the report."""
    from llmpress.evaluate import EvalConfig, SpeedConfig, evaluate_artifact
    from llmpress.plan.recipes import RecipeContext, parse_recipe
    from llmpress.report.search import write_report
    from llmpress.sources import resolve

    cfg = config.validate()
    recipes = cfg.space.recipes()
    for r in recipes:
        parse_recipe(r)
    if cfg.task:
        from llmpress.evaluate.task import check_task

        check_task(cfg.task, cfg.task_limit)
    clock = _Clock(cfg.budget_minutes * 60.0)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir()
    source = resolve(cfg.model)
    full_cfg = EvalConfig(data=cfg.data, max_tokens=cfg.max_tokens, task=cfg.task, task_limit=cfg.task_limit,
                          speed_config=SpeedConfig(batch_sizes=tuple(cfg.batch_sizes), new_tokens=cfg.new_tokens,
                                                   repeats=cfg.repeats))
    ctx = RecipeContext(data=cfg.data, calibration_samples=cfg.calibration_samples, progress=progress)
    bar = progress.add_task("search: baseline", total=None) if progress is not None else None

    def say(text: str) -> None:
        if bar is not None:
            progress.update(bar, description=f"search: {text}")

    def too_small(what: str, used: float) -> BudgetError:
        need = math.ceil(used / 60.0 * 3 + 1)
        return BudgetError(f"--budget-minutes {cfg.budget_minutes:g} is too small: {what} alone took "
                           f"{used / 60:.1f} min", f"raise --budget-minutes to at least {need}")

    # Baseline: the proxy first (if even that does not fit, stop before the expensive part), then fully.
    t = time.perf_counter()
    base_proxy = _proxy(source, cfg)
    proxy_s = time.perf_counter() - t
    if clock.left() <= 0:
        raise too_small("the baseline's proxy evaluation", clock.used())
    say("baseline, full measurement")
    t = time.perf_counter()
    base = SearchCandidate("baseline", source.id, source.name, rung=1, status="measured", cost_class="-",
                           proxy_perplexity=base_proxy["perplexity"], proxy_delta_pct=0.0,
                           mb_on_disk=base_proxy["mb_on_disk"])
    _fill_full(base, evaluate_artifact(source, full_cfg, progress=progress), None)
    full_s = time.perf_counter() - t
    base.seconds = proxy_s + full_s
    if clock.left() <= 0:
        raise too_small("measuring the baseline", clock.used())

    # Rung 0: build and proxy-measure, cheapest first, keeping time for the full measurement of survivors.
    cands = [SearchCandidate(r, cost_class=cost_class(r)) for r in recipes]
    cands.sort(key=lambda c: (_CLASS_ORDER.index(c.cost_class), c.recipe))
    n_full_planned = max(1, math.ceil(len(cands) / cfg.eta))
    reserve = full_s * min(n_full_planned, 4)
    measured_cost: dict[str, list[float]] = {}
    cache: dict[str, Any] = {}
    arts: dict[str, Any] = {}
    if bar is not None:
        progress.update(bar, total=len(cands) + n_full_planned, completed=0)
    for c in cands:
        # a structural prefix built already (cached) costs nothing again: only the rest counts
        head, _, rest = c.recipe.partition("+")
        klass = cost_class(rest) if rest and head in cache else c.cost_class
        guess = measured_cost.get(klass)
        est = (sum(guess) / len(guess)) if guess else _COST_GUESS[klass] * proxy_s
        if clock.left() - reserve < est:
            c.reason = f"budget: needs ~{est / 60:.1f} min to build, {max(0.0, clock.left() - reserve) / 60:.1f} left"
            if bar is not None:
                progress.advance(bar)
            continue
        say(f"rung 0: {c.recipe}")
        t = time.perf_counter()
        try:
            art = _build(c.recipe, source, ctx, cache)
            p = _proxy(art, cfg)
            c.artifact_id, c.name, c.rung = art.id, art.name, 0
            arts[c.recipe] = art
            c.proxy_perplexity, c.mb_on_disk = p["perplexity"], p["mb_on_disk"]
            c.proxy_delta_pct = (p["perplexity"] / base_proxy["perplexity"] - 1.0) * 100.0
            c.status = "pruned"
        except LlmpressError as e:
            c.status, c.reason = "error", e.one_line()
        c.seconds = time.perf_counter() - t
        measured_cost.setdefault(klass, []).append(c.seconds)
        if bar is not None:
            progress.advance(bar)

    # Halving: the proxy gate and the weight size decide who is measured fully. Candidates whose proxy is
    # already inside the quality gate go first (by size on disk, the speed proxy of memory-bound decode);
    # those only inside the looser proxy gate follow.
    gate = cfg.proxy_gate()
    ok: list[SearchCandidate] = []
    for c in cands:
        if c.rung != 0:
            continue
        if (c.proxy_delta_pct or 0.0) > gate:
            c.reason = f"proxy Δppl {c.proxy_delta_pct:+.2f} % > proxy gate {gate:g} %"
        elif cfg.max_memory_mb is not None and (c.mb_on_disk or 0.0) > cfg.max_memory_mb:
            c.reason = f"weights alone {c.mb_on_disk:.0f} MB > --max-memory-mb {cfg.max_memory_mb:g}"
        else:
            ok.append(c)
    ok = rank_for_full(ok, cfg)

    # Rung 1: full measurements in rank order. 1/eta of the candidates were planned (their time was kept
    # aside while building); budget left after them goes to the next ranked ones instead of being returned.
    for rank, c in enumerate(ok):
        if clock.left() < full_s * 0.8:
            c.reason = (f"halving: rank {rank + 1} of {len(ok)} (proxy inside the gate first, then size on disk); "
                        f"the budget ended after {rank} full measurements (~{full_s / 60:.1f} min each)")
            continue
        say(f"rung 1: {c.recipe}")
        t = time.perf_counter()
        try:
            _fill_full(c, evaluate_artifact(arts[c.recipe], full_cfg, progress=progress), base)
            c.rung, c.status, c.reason = 1, "measured", ""
        except LlmpressError as e:
            c.status, c.reason = "error", e.one_line()
        c.seconds += time.perf_counter() - t
        if bar is not None:
            progress.advance(bar)

    winner, why = _decide([base, *cands], cfg)
    result = SearchResult(cfg, base, cands, winner, why, out_dir)
    result.seconds = clock.used()
    result.files = write_report(result, out_dir)
    return result


def rank_for_full(cands: list[SearchCandidate], cfg: SearchConfig) -> list[SearchCandidate]:
    """The order of full measurements: proxy already inside the quality gate first, then by size on disk
    (the speed proxy of memory-bound decode), then by proxy perplexity. Ranking by size alone sent the
    smallest candidates (proxy +3..+4 %, fully measured +5..+26 %) ahead of int4 g32 and int8 (proxy -1.6 %
    and -0.7 %), so a SmolLM2 search ended with the untouched model as its winner."""
    likely = cfg.max_quality_drop if not cfg.task else math.inf  # task gates are in points, not % perplexity
    return sorted(cands, key=lambda c: ((c.proxy_delta_pct or 0.0) > likely, c.mb_on_disk or math.inf,
                                        c.proxy_perplexity or math.inf))


def _decide(all_c: list[SearchCandidate], cfg: SearchConfig) -> tuple[SearchCandidate | None, list[str]]:
    """Mark constraints and the (quality, speed, memory) front; the fastest inside every constraint wins."""
    full = [c for c in all_c if c.rung == 1]
    for c in full:
        reasons = _constraints(c, cfg)
        c.passes = not reasons
        if reasons:
            c.status, c.reason = "rejected", "; ".join(reasons)
    pts = [(-(c.quality_drop() or 0.0), c.b1_tok_s or 0.0, -(c.peak_rss_mb or 0.0)) for c in full]
    for i in pareto_front_nd(pts):
        full[i].on_front = True
    ok = [c for c in full if c.passes and c.b1_tok_s is not None]
    unit = "task points" if cfg.task else "% perplexity"
    limits = [f"quality drop ≤ {cfg.max_quality_drop:g} {unit}"]
    if cfg.max_memory_mb is not None:
        limits.append(f"peak RSS ≤ {cfg.max_memory_mb:g} MB")
    if cfg.min_tok_s is not None:
        limits.append(f"b1 ≥ {cfg.min_tok_s:g} tok/s")
    built = sum(1 for c in all_c if c.rung >= 0)
    why = [f"explored {built - 1} of {len(all_c) - 1} recipes in the space (plus the baseline); "
           f"{len(full)} measured fully (including the baseline); constraints: {', '.join(limits)}."]
    if not ok:
        why.append("no fully measured candidate is inside every constraint: relax --max-quality-drop, "
                   "--max-memory-mb or --min-tok-s, or give a larger --budget-minutes")
        return None, why
    ok.sort(key=lambda c: (-(c.b1_tok_s or 0.0), c.quality_drop() or 0.0))
    w = ok[0]
    w.status = "winner"
    drop = w.quality_drop() or 0.0
    why.append(f"`{w.recipe}` wins: the fastest inside every constraint at {w.b1_tok_s:.1f} tok/s (batch 1), "
               f"quality drop {drop:+.2f} {unit}, peak RSS {w.peak_rss_mb or 0:.0f} MB, "
               f"{w.mb_on_disk or 0:.1f} MB on disk" + ("; it is on the Pareto front." if w.on_front else "."))
    if len(ok) > 1:
        r = ok[1]
        why.append(f"runner-up `{r.recipe}` at {r.b1_tok_s:.1f} tok/s ({(r.quality_drop() or 0):+.2f} {unit}).")
    faster = [c for c in full if not c.passes and (c.b1_tok_s or 0) > (w.b1_tok_s or 0)]
    for c in faster:
        why.append(f"`{c.recipe}` was faster ({c.b1_tok_s:.1f} tok/s) but is out: {c.reason}.")
    return w, why
