"""`llmpress optimize [MODEL]`: the main job — compress, verify, keep what passes, report."""

from __future__ import annotations

from pathlib import Path

import typer

from llmpress.cli.common import console, out, print_json, progress, run_guarded


def optimize_cmd(
    model: str = typer.Argument("builtin:smollm2-135m", help="Model to optimize (builtin, artifact, dir, .gguf)."),
    data: str = typer.Option("builtin:pydoc", "--data", help="Corpus for calibration, QAT and evaluation."),
    max_quality_drop: str = typer.Option("2%", "--max-quality-drop", help="Quality gate: max Δ perplexity."),
    target: str = typer.Option("latency", "--target", help="latency (b1 tok/s) | throughput (b32) | memory (RSS)."),
    recipes: str | None = typer.Option(None, "--recipes",
                                       help="Comma-separated recipes; steps compose with '+', e.g. "
                                            "'int8-weight-only,prune:heads-25%+int8-weight-only'. Default: all schemes."),
    out_dir: Path | None = typer.Option(None, "--out", help="Report directory (default $LLMPRESS_HOME/reports/...)."),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="Eval tokens per model."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Decode batch sizes to time."),
    new_tokens: int = typer.Option(16, "--new-tokens", help="New tokens per timed generation."),
    repeats: int = typer.Option(2, "--repeats", help="Timed repeats per batch size."),
    samples: int = typer.Option(64, "--samples", help="Calibration windows for GPTQ / int8-static."),
    qat_steps: int = typer.Option(40, "--qat-steps", help="QAT fine-tuning steps."),
    list_recipes: bool = typer.Option(False, "--list-recipes", help="List recipe steps and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    task: str | None = typer.Option(None, "--task", help="Judge quality on a task (.jsonl, builtin:pydoc-mc, "
                                    "builtin:fortunes-cls, lm-eval:TASK): the gate is its score drop in points."),
    task_limit: int | None = typer.Option(None, "--task-limit", help="Score at most this many task items."),
    search: bool = typer.Option(False, "--search", help="Successive-halving search over a recipe space "
                                "(see --space) within --budget-minutes instead of a fixed recipe list."),
    budget_minutes: float = typer.Option(30.0, "--budget-minutes", help="--search: wall-clock budget."),
    max_memory_mb: float | None = typer.Option(None, "--max-memory-mb", help="--search: max peak RSS (MB)."),
    min_tok_s: float | None = typer.Option(None, "--min-tok-s", help="--search: min decode tok/s at batch 1."),
    space: str | None = typer.Option(None, "--space", help="--search: axes, e.g. 'schemes=none,int8-weight-only,"
                                     "int4-weight-only;groups=32,64;gptq=no,yes;prune=0,25%;recover=0,50;distill=0,50%'."),
    eta: int = typer.Option(3, "--eta", help="--search: keep 1/eta of the proxy-measured candidates."),
    proxy_tokens: int = typer.Option(512, "--proxy-tokens", help="--search: perplexity tokens of the cheap proxy."),
) -> None:
    """Apply recipes, evaluate all on the same data, gate on quality, pick the best on the target."""

    def body() -> None:
        from llmpress.cli.quantize import _batch_sizes
        from llmpress.plan.optimize import DEFAULT_RECIPES, OptimizeConfig, optimize
        from llmpress.plan.pareto import parse_quality_drop

        if list_recipes:
            _print_recipes(as_json)
            return
        if search:
            from llmpress.cli.plan import run_search

            run_search(model=model, data=data, task=task, task_limit=task_limit, budget_minutes=budget_minutes,
                       max_quality_drop=parse_quality_drop(max_quality_drop), max_memory_mb=max_memory_mb,
                       min_tok_s=min_tok_s, space=space, eta=eta, proxy_tokens=proxy_tokens, out_dir=out_dir,
                       max_tokens=max_tokens, batch_sizes=_batch_sizes(batch_sizes), new_tokens=new_tokens,
                       repeats=repeats, samples=samples, as_json=as_json)
            return
        if task is not None:
            from llmpress.evaluate.task import check_task

            check_task(task, task_limit)
        from llmpress.plan.recipes import split_recipes

        rs = tuple(split_recipes(recipes)) if recipes else DEFAULT_RECIPES
        cfg = OptimizeConfig(model=model, data=data, max_quality_drop=parse_quality_drop(max_quality_drop),
                             target=target, recipes=rs, out_dir=out_dir, max_tokens=max_tokens,
                             batch_sizes=_batch_sizes(batch_sizes), new_tokens=new_tokens, repeats=repeats,
                             calibration_samples=samples, qat_steps=qat_steps, task=task, task_limit=task_limit)
        cfg.validate()
        with progress() as p:
            res = optimize(cfg, progress=p)
        if as_json:
            print_json(res.to_dict())
            return
        _print(res)

    run_guarded(body)


def _print(res) -> None:  # noqa: ANN001
    from rich.table import Table

    from llmpress.report.optimize import HEADERS, table_rows

    t = Table(title=f"llmpress optimize — target {res.config.target}, gate Δppl ≤ {res.config.max_quality_drop:g} %")
    for h in HEADERS:
        t.add_column(h, justify="left" if h in ("recipe", "artifact", "gate") else "right")
    for r in table_rows(res):
        t.add_row(*r)
    out.print(t)
    console.print(f"report: {res.files.get('markdown')}  html: {res.files.get('html')}  plot: {res.files.get('plot')}")
    if res.chosen:
        c = res.chosen
        out.print(f"chosen: {c.recipe} -> {c.artifact_id} (Δppl {c.delta_pct:+.2f} %, b1 {c.b1_tok_s or 0:.1f} tok/s)")
        out.print(f"serve it: llmpress serve {c.artifact_id}")
    else:
        out.print("no candidate passed the quality gate; relax --max-quality-drop or add recipes")


def _print_recipes(as_json: bool) -> None:
    from rich.table import Table

    from llmpress.plan.recipes import recipe_table

    rows = [{"step": n, "summary": s.summary, "arg": s.arg_help} for n, s in recipe_table().items()]
    if as_json:
        print_json(rows)
        return
    t = Table(title="recipe steps (compose with '+', arguments after ':')")
    for c in ("step", "summary", "arg"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["step"], r["summary"], r["arg"])
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize_cmd)
