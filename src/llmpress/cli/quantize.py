"""`llmpress quantize MODEL --scheme NAME [...]`: one quantization step, evaluated and recorded."""

from __future__ import annotations

import typer

from llmpress.cli.common import console, out, print_json, progress, run_guarded


def quantize_cmd(
    model: str = typer.Argument(..., help="builtin:NAME, artifact id/name, HF dir, .gguf or hub id."),
    scheme: str = typer.Option("int8-weight-only", "--scheme", "-s",
                               help="fp16 | bf16 | int8-dynamic | int8-weight-only | int4-weight-only | "
                                    "int8-static | qat (see `llmpress quantize-schemes`)."),
    group_size: int | None = typer.Option(None, "--group-size", help="int4 / qat group size (32, 64, 128, 256)."),
    calibration: str | None = typer.Option(None, "--calibration",
                                           help="Calibration corpus (int4 GPTQ, int8-static), e.g. builtin:pydoc."),
    samples: int | None = typer.Option(None, "--samples", help="Calibration windows."),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Tokens per calibration / training window."),
    method: str | None = typer.Option(None, "--method", help="int4: rtn | gptq."),
    no_smoothquant: bool = typer.Option(False, "--no-smoothquant", help="int8-static: plain absmax scales."),
    steps: int | None = typer.Option(None, "--steps", help="qat: training steps."),
    bits: int | None = typer.Option(None, "--bits", help="qat: 4 or 8."),
    data: str = typer.Option("builtin:pydoc", "--data", help="Eval corpus (and qat training corpus)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens",
                                          help="Evaluate on at most this many tokens (default: the whole eval "
                                               "split, as `llmpress eval` does, so the numbers match)."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Decode batch sizes to time."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Only quantize; skip the evaluation."),
    name: str | None = typer.Option(None, "--name", help="Name of the new artifact."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Quantize a model into a new artifact (parent = input), then record size, RSS, perplexity Δ and speed."""

    def body() -> None:
        from llmpress.compress.quantize import make_config, quantize
        from llmpress.evaluate import EvalConfig, SpeedConfig, evaluate_artifact
        from llmpress.sources import resolve

        opts = {"group_size": group_size, "calibration": calibration, "samples": samples, "seq_len": seq_len,
                "method": method, "steps": steps, "bits": bits}
        if no_smoothquant:
            opts["smoothquant"] = False
        if scheme == "qat":
            opts["data"] = data
        cfg = make_config(scheme, **opts)
        sizes = _batch_sizes(batch_sizes)
        src = resolve(model)
        with progress() as p:
            eval_cfg = EvalConfig(data=data, max_tokens=max_tokens, speed_config=SpeedConfig(batch_sizes=sizes))
            pq = src.manifest.metrics.get("quality") or {}
            if not no_eval and ("perplexity" not in pq or pq.get("data") != data
                                or pq.get("max_tokens") != max_tokens):
                # Δ is measured against the parent's perplexity on the same data and token budget.
                evaluate_artifact(src, EvalConfig(data=data, max_tokens=max_tokens, speed=False), progress=p)
            art = quantize(src, cfg, progress=p, name=name)
            results = {} if no_eval else evaluate_artifact(art, eval_cfg, progress=p)
        if as_json:
            print_json({"id": art.id, "name": art.name, "path": str(art.path), "parent": src.id,
                        "quantization": art.manifest.extra.get("quantization", {}).get("params"), **results})
            return
        _print(art, results)
        console.print(f"artifact {art.id} written to {art.path}\nserve it: llmpress serve {art.id}")

    run_guarded(body)


def _batch_sizes(text: str) -> tuple[int, ...]:
    from llmpress.errors import ConfigError

    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError as e:
        raise ConfigError(f"--batch-sizes {text!r} is not a list of integers", "e.g. --batch-sizes 1,8,32") from e


def _print(art, results: dict) -> None:  # noqa: ANN001
    from rich.table import Table

    from llmpress.report.bench import summary_row
    from llmpress.report.tables import fmt

    t = Table(title=f"quantize: {art.name} ({art.id})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("scheme", str(art.manifest.extra.get("quantization", {}).get("scheme")))
    for k, v in summary_row(art.name, art.id, results).items():
        if k not in ("model", "id") and v is not None:
            t.add_row(k, fmt(v))
    q = results.get("quality", {})
    if "delta_ppl_pct" in q:
        t.add_row("Δ perplexity vs parent", f"{q['delta_ppl_pct']:+.2f} %")
    out.print(t)


def schemes_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """List quantization schemes, their options and storage formats."""

    def body() -> None:
        from dataclasses import fields

        from rich.table import Table

        from llmpress.compress.quantize import SCHEMES, scheme_names

        scheme_names()
        rows = [{"scheme": n, "summary": s.summary, "storage": s.storage,
                 "options": {f.name: f.default for f in fields(s.config_cls)}} for n, s in SCHEMES.items()]
        if as_json:
            print_json(rows)
            return
        t = Table(title="quantization schemes")
        for c in ("scheme", "summary", "storage", "options"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["scheme"], r["summary"], r["storage"], ", ".join(f"{k}={v}" for k, v in r["options"].items()))
        out.print(t)

    run_guarded(body)


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)
    app.command("quantize-schemes")(schemes_cmd)
