"""`llmpress plan --requirements req.yaml` (recommendation) and the body of `llmpress optimize --search`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from llmpress.cli.common import console, out, print_json, progress, run_guarded


def run_search(*, model: str, data: str, task: str | None, task_limit: int | None, budget_minutes: float,
               max_quality_drop: float, max_memory_mb: float | None, min_tok_s: float | None, space: str | None,
               eta: int, proxy_tokens: int, out_dir: Path | None, max_tokens: int, batch_sizes: tuple[int, ...],
               new_tokens: int, repeats: int, samples: int, as_json: bool) -> None:
    """`optimize --search`: build the config, run the search, print the table (called inside run_guarded)."""
    from rich.table import Table

    from llmpress.plan.search import SearchConfig, parse_space, search
    from llmpress.report.search import HEADERS, rows
    from llmpress.report.tables import fmt

    cfg = SearchConfig(model=model, data=data, task=task, task_limit=task_limit, budget_minutes=budget_minutes,
                       max_quality_drop=max_quality_drop, max_memory_mb=max_memory_mb, min_tok_s=min_tok_s,
                       space=parse_space(space), eta=eta, proxy_tokens=proxy_tokens, max_tokens=max_tokens,
                       batch_sizes=batch_sizes, new_tokens=new_tokens, repeats=repeats,
                       calibration_samples=samples, out_dir=out_dir).validate()
    with progress() as p:
        res = search(cfg, progress=p)
    if as_json:
        print_json(res.to_dict())
        return
    t = Table(title=f"llmpress optimize --search — budget {cfg.budget_minutes:g} min, gate {cfg.max_quality_drop:g}"
                    + (" task points" if cfg.task else " % perplexity"))
    shown = [i for i, h in enumerate(HEADERS) if h not in ("artifact", "seconds", "perplexity")]
    for i in shown:
        h = HEADERS[i]
        t.add_column(h, justify="left" if h in ("recipe", "status", "reason") else "right",
                     overflow="fold", min_width=12 if h in ("recipe", "reason") else None)
    for r in rows(res):
        t.add_row(*[r[i] if isinstance(r[i], str) else fmt(r[i]) for i in shown])
    out.print(t)
    for line in res.why:
        out.print(line, highlight=False)
    if res.winner:
        out.print(f"serve it: llmpress serve {res.winner.artifact_id}")
    console.print(f"report: {res.files.get('markdown')}  html: {res.files.get('html')}  plot: {res.files.get('plot')}")


def plan_cmd(
    ctx: typer.Context,
    requirements: Path | None = typer.Option(None, "--requirements", "-r", help="Requirements YAML (see examples/)."),
    gateway: Path | None = typer.Option(None, "--gateway", help="Gateway config YAML with API targets "
                                        "(overrides the requirements' `gateway:` key)."),
    top: int = typer.Option(10, "--top", help="Show at most this many valid options."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Recommend a model, compression recipe and deployment form for privacy, latency, traffic, budget,
    hardware and quality requirements: ranked options, rejected ones with reasons, measured vs assumed.
    `llmpress plan capacity ...` sizes replicas for a request rate instead."""
    if ctx.invoked_subcommand is not None:
        return
    if requirements is None:
        def missing() -> None:
            from llmpress.errors import ConfigError

            raise ConfigError("plan needs --requirements FILE (or the `capacity` subcommand)",
                              "pass e.g. `llmpress plan --requirements examples/requirements-privacy.yaml`")

        run_guarded(missing)

    def body() -> None:
        from llmpress.plan.recommend import recommend

        rec = recommend(requirements, gateway_path=gateway)
        if as_json:
            print_json(rec.to_dict())
            return
        _print_plan(rec, top)

    run_guarded(body)


def _print_plan(rec: Any, top: int) -> None:
    from rich.table import Table

    out.print(f"[bold]{rec.requirements.name}[/]: {rec.summary}", highlight=False)
    t = Table(title="options (ranked)")
    for h in ("#", "model", "recipe", "form", "replicas", "$/month", "p95 TTFT ms", "tok/s", "quality", "sources"):
        t.add_column(h, justify="left" if h in ("model", "recipe", "form", "sources", "quality") else "right")
    for i, o in enumerate(rec.options[:top], 1):
        t.add_row(str(i), o.model, o.recipe, o.form, str(o.replicas), o.figure("cost_usd_month"),
                  o.figure("p95_ttft_ms"), o.figure("tok_s"), o.figure("quality"), o.sources_line())
    out.print(t)
    if rec.options:
        out.print(f"recommended: {rec.options[0].headline()}", highlight=False)
        for line in rec.options[0].notes:
            out.print(f"  - {line}", highlight=False)
    if rec.break_even:
        out.print(f"break-even: {rec.break_even}", highlight=False)
    if rec.rejected:
        r = Table(title="rejected options")
        for h in ("model", "form", "reason"):
            r.add_column(h)
        for o in rec.rejected:
            r.add_row(o.model, o.form, "; ".join(o.rejected))
        out.print(r)


def register(app: typer.Typer) -> None:
    from llmpress.cli.capacity import register as register_capacity

    plan = typer.Typer(invoke_without_command=True, no_args_is_help=False, add_completion=False)
    plan.callback()(plan_cmd)
    register_capacity(plan)  # `llmpress plan capacity` (also top-level `llmpress capacity`)
    app.add_typer(plan, name="plan")
