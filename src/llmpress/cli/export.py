"""`llmpress export MODEL --format onnx|gguf|triton [--precision P] [--out DIR]`, `--recommend`, `export-formats`."""

from __future__ import annotations

from pathlib import Path

import typer

from llmpress.cli.common import console, out, print_json, progress, run_guarded


def export_cmd(
    model: str | None = typer.Argument(None, help="builtin:NAME, artifact id/name, HF dir, .gguf or hub id."),
    fmt: str | None = typer.Option(None, "--format", "-f", help="onnx | gguf | triton (see `llmpress export-formats`)."),
    precision: str | None = typer.Option(None, "--precision", "-p",
                                         help="onnx/triton: fp32 | int8 | int4; gguf: f32 | f16 | q8_0 | q4_0 | q4_1 "
                                              "(fp32/fp16/int8/int4 accepted as aliases)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Write the export here (must not exist); "
                                                            "default: the artifact store."),
    name: str | None = typer.Option(None, "--name", help="Name of the new artifact."),
    block_size: int | None = typer.Option(None, "--block-size", help="onnx/triton int4/int8: MatMulNBits block (32)."),
    accuracy_level: int | None = typer.Option(None, "--accuracy-level",
                                              help="onnx/triton int4/int8: MatMulNBits activations, 4 = int8, 1 = fp32."),
    head_matmul: str | None = typer.Option(None, "--head-matmul",
                                           help="onnx int4: the int8 head as a float MatMul (float, fast on CPU) "
                                                "or 8-bit MatMulNBits (int8, smallest)."),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size", help="triton: max_batch_size."),
    model_name: str | None = typer.Option(None, "--model-name", help="triton: model name in the repository."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Only export and verify; skip the evaluation."),
    data: str = typer.Option("builtin:pydoc", "--data", help="Eval corpus."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Evaluate on at most this many tokens."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Decode batch sizes to time."),
    recommend: bool = typer.Option(False, "--recommend", help="Print the measured best export for the budget."),
    max_memory_mb: float | None = typer.Option(None, "--max-memory-mb", help="--recommend: peak RSS budget (MB)."),
    max_quality_drop: float | None = typer.Option(None, "--max-quality-drop",
                                                  help="--recommend: largest Δ perplexity vs source (%)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Export a model for another runtime as a verified child artifact (ONNX Runtime GenAI, llama.cpp, Triton)."""

    def body() -> None:
        from llmpress.errors import ConfigError

        if recommend:
            if max_memory_mb is None or max_quality_drop is None:
                raise ConfigError("--recommend needs --max-memory-mb and --max-quality-drop",
                                  "e.g. llmpress export --recommend --max-memory-mb 600 --max-quality-drop 5")
            _recommend(model, max_memory_mb, max_quality_drop, as_json)
            return
        if model is None or fmt is None:
            raise ConfigError("export needs a MODEL and --format", "e.g. llmpress export builtin:tiny-llama --format gguf")
        _export(model, fmt, precision, out_dir, name, block_size, accuracy_level, head_matmul, max_batch_size,
                model_name, no_eval, data, max_tokens, batch_sizes, as_json)

    run_guarded(body)


def _export(model: str, fmt: str, precision: str | None, out_dir: Path | None, name: str | None,
            block_size: int | None, accuracy_level: int | None, head_matmul: str | None, max_batch_size: int | None,
            model_name: str | None, no_eval: bool, data: str, max_tokens: int | None, batch_sizes: str,
            as_json: bool) -> None:
    from llmpress.cli.quantize import _batch_sizes
    from llmpress.evaluate import EvalConfig, SpeedConfig, evaluate_artifact
    from llmpress.export import export, get_format, make_config
    from llmpress.export.base import check_runtime
    from llmpress.sources import resolve

    f = get_format(fmt)
    opts = {"precision": precision, "block_size": block_size, "accuracy_level": accuracy_level,
            "head_matmul": head_matmul, "max_batch_size": max_batch_size, "model_name": model_name}
    cfg = make_config(fmt, **opts)
    check_runtime(f)
    sizes = _batch_sizes(batch_sizes)
    if out_dir is not None and Path(out_dir).expanduser().exists():
        from llmpress.errors import ConfigError

        raise ConfigError(f"output directory {out_dir} already exists", "pass a new --out path or remove it")
    src = resolve(model)
    with progress() as p:
        pq = src.manifest.metrics.get("quality") or {}
        if not no_eval and ("perplexity" not in pq or pq.get("data") != data or pq.get("max_tokens") != max_tokens):
            # Δ is measured against the source's perplexity on the same data and token budget.
            evaluate_artifact(src, EvalConfig(data=data, max_tokens=max_tokens, speed=False), progress=p)
        art = export(src, cfg, out=out_dir, name=name, progress=p)
        results = {} if no_eval else evaluate_artifact(
            art, EvalConfig(data=data, max_tokens=max_tokens, speed_config=SpeedConfig(batch_sizes=sizes)), progress=p)
    facts = art.manifest.extra.get("export", {})
    if as_json:
        print_json({"id": art.id, "name": art.name, "path": str(art.path), "parent": src.id, "format": f.name,
                    "precision": cfg.precision, "export": facts, **results})
        return
    _print(art, facts, results)
    console.print(f"artifact {art.id} ({f.name}, {cfg.precision}) written to {art.path}")


def _print(art, facts: dict, results: dict) -> None:  # noqa: ANN001
    from rich.table import Table

    from llmpress.report.bench import summary_row
    from llmpress.report.tables import fmt

    v = facts.get("verification", {})
    t = Table(title=f"export: {art.name} ({art.id})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("format / precision", f"{facts.get('format')} / {facts.get('precision')}")
    t.add_row("MB on disk", fmt(art.bytes_on_disk() / 1e6))
    t.add_row("verified with", str(v.get("runtime")))
    t.add_row("max |Δ logit| vs source", f"{v.get('max_abs_logit_diff', float('nan')):.3g}")
    t.add_row("top-1 agreement", fmt(v.get("top1_agreement")))
    t.add_row("greedy continuations identical", f"{v.get('greedy_identical')}/{v.get('prompts')}")
    if results:
        for k, val in summary_row(art.name, art.id, results).items():
            if k not in ("model", "id") and val is not None:
                t.add_row(k, fmt(val))
        q = results.get("quality", {})
        if "delta_ppl_pct" in q:
            t.add_row("Δ perplexity vs source", f"{q['delta_ppl_pct']:+.3f} %")
    out.print(t)


def _recommend(model: str | None, max_mb: float, max_drop: float, as_json: bool) -> None:
    from dataclasses import asdict

    from rich.table import Table

    from llmpress.export.recommend import recommend
    from llmpress.report.tables import fmt

    best, cands = recommend(max_mb, max_drop, model)
    if as_json:
        print_json({"best": asdict(best) if best else None, "candidates": [asdict(c) for c in cands]})
        return
    t = Table(title=f"export --recommend (peak RSS <= {max_mb:.0f} MB, Δppl <= {max_drop} %)")
    for c in ("", "id", "name", "format", "precision", "MB on disk", "peak RSS MB", "b1 tok/s", "Δppl %", "why"):
        t.add_column(c)
    for c in cands:
        t.add_row("★" if best is c else "", c.id, c.name, c.format, c.precision, fmt(c.mb_on_disk), fmt(c.peak_rss_mb),
                  fmt(c.b1_tok_s), fmt(c.delta_ppl_pct), c.why)
    out.print(t)
    if best is None:
        console.print("no measured candidate fits: raise the budget or export a smaller precision")
    else:
        console.print(f"best: {best.name} ({best.id}) — {best.format} {best.precision}")


def formats_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List export formats, their precisions, what loads them and the extra that installs the runtime."""

    def body() -> None:
        from rich.markup import escape
        from rich.table import Table

        from llmpress.export import FORMATS, format_names

        format_names()
        rows = [{"format": f.name, "precisions": list(f.precisions), "aliases": f.aliases, "extra": f.extra,
                 "summary": f.summary} for f in FORMATS.values()]
        if as_json:
            print_json(rows)
            return
        t = Table(title="export formats")
        for c in ("format", "precisions", "extra", "what it writes"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["format"], ", ".join(r["precisions"]), escape(f"llmpress[{r['extra']}]"), r["summary"])
        out.print(t)

    run_guarded(body)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
    app.command("export-formats")(formats_cmd)
