"""`llmpress prune MODEL --method structured --heads 25% --mlp 25% [--recover STEPS]`."""

from __future__ import annotations

from typing import Any

import typer

from llmpress.cli.common import console, out, print_json, progress, run_guarded


def register(app: typer.Typer) -> None:
    @app.command("prune")
    def prune_cmd(
        model: str = typer.Argument(..., help="builtin:smollm2-135m, an artifact id/name or an HF directory"),
        method: str = typer.Option("structured", "--method", "-m", help="unstructured | structured | 2:4 | layers"),
        amount: str = typer.Option(None, "--amount", help="unstructured: fraction of weights zeroed (50% or 0.5)"),
        scope: str = typer.Option("layer", "--scope", help="unstructured: layer or global"),
        heads: str = typer.Option(None, "--heads", help="structured: fraction of attention heads removed"),
        mlp: str = typer.Option(None, "--mlp", help="structured: fraction of MLP neurons removed"),
        layers: int = typer.Option(None, "--layers", help="layers: number of decoder layers dropped"),
        reconstruct: bool = typer.Option(True, "--reconstruct/--no-reconstruct",
                                         help="structured: refit o_proj/down_proj to the parent's outputs"),
        recover: int = typer.Option(0, "--recover", help="recovery distillation steps from the parent (0 = none)"),
        data: str = typer.Option("builtin:pydoc", "--data", help="calibration / recovery corpus"),
        samples: int = typer.Option(64, "--calibration-samples", help="calibration windows"),
        seq_len: int = typer.Option(256, "--seq-len", help="tokens per calibration window"),
        name: str = typer.Option(None, "--name", help="name of the new artifact"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    ) -> None:
        """Prune a model into a new artifact (lineage + metrics recorded)."""

        def body() -> Any:
            from llmpress.compress.prune import PruneConfig, prune
            from llmpress.sources import resolve

            cfg = PruneConfig(method=method, amount=amount, scope=scope, heads=heads, mlp=mlp, layers=layers,
                              reconstruct=reconstruct,
                              data=data, calibration_samples=samples, seq_len=seq_len, recover_steps=recover,
                              name=name).validate()
            parent = resolve(model)
            with progress() as p:
                art = prune(parent, cfg, progress=p)
            rep = {k: v for k, v in art.manifest.metrics.get("prune", {}).items()
                   if k not in ("kept_heads", "block_influence")}
            result = {"id": art.id, "name": art.name, "path": str(art.path), "parent": parent.id,
                      "method": cfg.method, **rep, "bytes_on_disk": art.bytes_on_disk(),
                      "bytes_parent": parent.bytes_on_disk()}
            if as_json:
                print_json(result)
                return
            from rich.table import Table

            t = Table(title=f"pruned {parent.name} -> {art.name} ({art.id})")
            t.add_column("metric")
            t.add_column("value", justify="right")
            for k, v in result.items():
                t.add_row(k, str(v))
            out.print(t)
            console.print(f"evaluate it with: llmpress eval {art.id}")

        run_guarded(body)
