"""`llmpress eval MODEL` and `llmpress bench MODEL [MODEL ...]`."""

from __future__ import annotations

from pathlib import Path

import typer

from llmpress.cli.common import console, out, print_json, progress, run_guarded


def _config(data: str, text_field: str, max_tokens: int | None, window: int, stride: int, batch_sizes: str,
            new_tokens: int, repeats: int, runner: str, quality: bool, speed: bool):
    from llmpress.errors import ConfigError
    from llmpress.evaluate import EvalConfig, SpeedConfig

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError as e:
        raise ConfigError(f"--batch-sizes {batch_sizes!r} is not a comma-separated list of integers",
                          "e.g. --batch-sizes 1,8,32") from e
    return EvalConfig(data=data, text_field=text_field, window=window, stride=stride, max_tokens=max_tokens,
                      quality=quality, speed=speed,
                      speed_config=SpeedConfig(batch_sizes=sizes, new_tokens=new_tokens, repeats=repeats,
                                               runner=runner))


DATA = typer.Option("builtin:pydoc", "--data", help="Corpus: builtin:pydoc, a .txt/.jsonl file, or hf:DATASET.")
FIELD = typer.Option("text", "--field", help="Text field of a .jsonl / HF dataset.")
MAXTOK = typer.Option(None, "--max-tokens", help="Evaluate on at most this many eval tokens.")
WINDOW = typer.Option(512, "--window", help="Perplexity window length (tokens).")
STRIDE = typer.Option(256, "--stride", help="Perplexity window stride (tokens).")
BATCHES = typer.Option("1,8,32", "--batch-sizes", help="Decode batch sizes to time.")
NEWTOK = typer.Option(32, "--new-tokens", help="New tokens per timed generation (EOS ignored).")
REPEATS = typer.Option(3, "--repeats", help="Timed repeats after one warm-up (median reported).")
RUNNER = typer.Option("auto", "--runner",
                      help="Decode loop to time: auto (engine if it serves the model, else lean) | engine | lean "
                           "(HF forward + KV cache) | hf (model.generate).")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
TASK = typer.Option(None, "--task", help="Also score a task: a .jsonl of {prompt, answer} or {query, choices, gold}, "
                                         "builtin:pydoc-mc, builtin:fortunes-cls, or lm-eval:TASK.")
TASK_LIMIT = typer.Option(None, "--task-limit", help="Score at most this many task items.")


def _with_task(cfg, task: str | None, task_limit: int | None):  # noqa: ANN001, ANN202
    """Attach a task to an EvalConfig after checking it (a bad task file fails before any model loads)."""
    if task is not None:
        from llmpress.evaluate.task import check_task

        check_task(task, task_limit)
        cfg.task, cfg.task_limit = task, task_limit
    return cfg


def _print_eval(name: str, results: dict) -> None:
    from rich.table import Table

    from llmpress.report.bench import summary_row
    from llmpress.report.tables import fmt

    row = summary_row(name, "", results)
    t = Table(title=f"eval: {name}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in row.items():
        if k not in ("model", "id", "task score") and v is not None:
            t.add_row(k, fmt(v))
    q = results.get("quality", {})
    if "delta_ppl_pct" in q:
        t.add_row("Δ perplexity vs parent", f"{q['delta_ppl_pct']:+.2f} %")
    tk = results.get("task")
    if tk:
        t.add_row(f"task {tk['task']} ({tk['metric']})", fmt(tk["score"]))
    if "nonzero_params" in results.get("size", {}):
        t.add_row("nonzero params (M)", fmt(results["size"]["nonzero_params"] / 1e6))
    out.print(t)


def eval_cmd(model: str = typer.Argument(..., help="builtin:NAME, artifact id/name, HF dir, .gguf or hub id."),
             data: str = DATA, text_field: str = FIELD, max_tokens: int | None = MAXTOK, window: int = WINDOW,
             stride: int = STRIDE, batch_sizes: str = BATCHES, new_tokens: int = NEWTOK, repeats: int = REPEATS,
             runner: str = RUNNER, no_speed: bool = typer.Option(False, "--no-speed", help="Skip speed."),
             no_quality: bool = typer.Option(False, "--no-quality", help="Skip perplexity."),
             task: str | None = TASK, task_limit: int | None = TASK_LIMIT, as_json: bool = JSON) -> None:
    """Evaluate one model: perplexity + bits/byte, TTFT + decode tok/s at b1/b8/b32 + peak RSS, size."""

    def body() -> None:
        from llmpress.evaluate import evaluate_artifact
        from llmpress.sources import resolve

        cfg = _config(data, text_field, max_tokens, window, stride, batch_sizes, new_tokens, repeats, runner,
                      not no_quality, not no_speed)
        cfg = _with_task(cfg, task, task_limit)
        art = resolve(model)
        with progress() as p:
            results = evaluate_artifact(art, cfg, progress=p)
        if as_json:
            print_json({"id": art.id, "name": art.name, "path": str(art.path), **results})
        else:
            _print_eval(f"{art.name} ({art.id})", results)

    run_guarded(body)


def bench_cmd(models: list[str] = typer.Argument(..., help="Two or more models to compare."),
              data: str = DATA, text_field: str = FIELD, max_tokens: int | None = MAXTOK, window: int = WINDOW,
              stride: int = STRIDE, batch_sizes: str = BATCHES, new_tokens: int = NEWTOK, repeats: int = REPEATS,
              runner: str = RUNNER, out_dir: Path | None = typer.Option(None, "--out", help="Report directory."),
              task: str | None = TASK, task_limit: int | None = TASK_LIMIT, as_json: bool = JSON) -> None:
    """Compare models measured the same way in one run: table, report.md and a quality-vs-speed plot."""

    def body() -> None:
        from rich.table import Table

        from llmpress.report.bench import COLUMNS, run_bench
        from llmpress.report.tables import fmt

        cfg = _config(data, text_field, max_tokens, window, stride, batch_sizes, new_tokens, repeats, runner,
                      True, True)
        cfg = _with_task(cfg, task, task_limit)
        with progress() as p:
            res = run_bench(models, cfg, out_dir, progress=p)
        if as_json:
            print_json({"rows": res.rows, "report": str(res.report), "plot": str(res.plot) if res.plot else None})
            return
        t = Table(title="llmpress bench")
        for c in COLUMNS:
            t.add_column(c, justify="left" if c in ("model", "id") else "right")
        for r in res.rows:
            t.add_row(*[fmt(r[c]) for c in COLUMNS])
        out.print(t)
        console.print(f"report: {res.report}" + (f"   plot: {res.plot}" if res.plot else ""))

    run_guarded(body)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("bench")(bench_cmd)
