"""`llmpress distill --teacher A (--student B | --student-layers N) --data ... --alpha 0.5 --temperature 2`."""

from __future__ import annotations

from typing import Any

import typer

from llmpress.cli.common import out, print_json, progress, run_guarded


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill_cmd(
        teacher: str = typer.Option(..., "--teacher", help="teacher model (builtin:, artifact id/name, HF dir)"),
        student: str = typer.Option(None, "--student", help="student model (e.g. a pruned artifact)"),
        student_layers: int = typer.Option(None, "--student-layers", help="student = N teacher layers, evenly spread"),
        data: str = typer.Option("builtin:pydoc", "--data", help="corpus: builtin:pydoc, a .txt or .jsonl"),
        alpha: float = typer.Option(0.5, "--alpha", help="weight of the hard-label (next-token) loss"),
        temperature: float = typer.Option(2.0, "--temperature", "-T", help="softmax temperature"),
        steps: int = typer.Option(100, "--steps", help="optimizer steps"),
        batch: int = typer.Option(4, "--batch", help="windows per step"),
        seq_len: int = typer.Option(128, "--seq-len", help="tokens per window"),
        lr: float = typer.Option(1e-4, "--lr", help="learning rate"),
        name: str = typer.Option(None, "--name", help="name of the new artifact"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    ) -> None:
        """Distil a causal LM teacher into a smaller student on a text corpus (task-agnostic)."""

        def body() -> Any:
            from llmpress.compress.distill import DistillConfig, distill
            from llmpress.sources import resolve

            cfg = DistillConfig(data=data, task="causal-lm", alpha=alpha, temperature=temperature,
                                student_layers=student_layers, steps=steps, batch_size=batch, seq_len=seq_len,
                                lr=lr, name=name).validate()
            t_art = resolve(teacher)
            s_art = resolve(student) if student else None
            with progress() as p:
                art = distill(t_art, cfg, student=s_art, progress=p)
            result = {"id": art.id, "name": art.name, "path": str(art.path), "teacher": t_art.id,
                      **art.manifest.metrics.get("distill", {}), "bytes_on_disk": art.bytes_on_disk()}
            if as_json:
                print_json(result)
                return
            from rich.table import Table

            t = Table(title=f"distilled {t_art.name} -> {art.name} ({art.id})")
            t.add_column("metric")
            t.add_column("value", justify="right")
            for k, v in result.items():
                t.add_row(k, str(v))
            out.print(t)

        run_guarded(body)
