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
        data: str = typer.Option("builtin:pydoc", "--data",
                                 help="causal-LM teacher: a corpus (builtin:pydoc, .txt, .jsonl); classifier teacher: "
                                      "a .jsonl of {\"text\", \"label\"} records (a list of labels if multi-label)"),
        alpha: float = typer.Option(0.5, "--alpha", help="weight of the hard-label loss (next token or class)"),
        temperature: float = typer.Option(2.0, "--temperature", "-T", help="softmax temperature"),
        steps: int = typer.Option(100, "--steps", help="optimizer steps"),
        epochs: float = typer.Option(None, "--epochs", help="passes over the data instead of --steps"),
        batch: int = typer.Option(4, "--batch", help="windows (or labeled records) per step"),
        seq_len: int = typer.Option(128, "--seq-len", help="tokens per window (labeled texts are cut to it)"),
        lr: float = typer.Option(1e-4, "--lr", help="learning rate"),
        name: str = typer.Option(None, "--name", help="name of the new artifact"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
        processes: int = typer.Option(1, "--processes", help="data-parallel ranks on this machine (gloo); "
                                      "--batch stays the global batch"),
    ) -> None:
        """Distil a teacher into a smaller student: a causal LM on a text corpus (task-agnostic), or a
        sequence classifier on labeled records (task-specific; the teacher's head decides)."""

        def body() -> Any:
            import contextlib
            import sys

            from llmpress.compress.distill import DistillConfig, distill
            from llmpress.scale import launch
            from llmpress.sources import resolve

            cfg = DistillConfig(data=data, alpha=alpha, temperature=temperature, student_layers=student_layers,
                                steps=steps, epochs=epochs, batch_size=batch, seq_len=seq_len, lr=lr,
                                name=name).validate()
            if processes > 1 and not launch.in_child():  # re-run as N ranks; the children do the work
                launch.per_process_batch(batch, processes)
                resolve(teacher)
                return launch.launch(sys.argv[1:], processes)
            if launch.world_size() > 1:
                launch.per_process_batch(batch, launch.world_size())
                launch.init_process_group()
            t_art = resolve(teacher)
            s_art = resolve(student) if student else None
            with progress() if launch.is_main() else contextlib.nullcontext() as p:
                art = distill(t_art, cfg, student=s_art, progress=p)
            if art is None:  # a data-parallel rank other than 0
                return 0
            result = {"id": art.id, "name": art.name, "path": str(art.path), "teacher": t_art.id,
                      "task": art.manifest.step.params.get("task"),
                      **art.manifest.metrics.get("distill", {}), "bytes_on_disk": art.bytes_on_disk()}
            if as_json:
                print_json(result)
                return 0
            from rich.table import Table

            t = Table(title=f"distilled {t_art.name} -> {art.name} ({art.id})")
            t.add_column("metric")
            t.add_column("value", justify="right")
            for k, v in result.items():
                t.add_row(k, str(v))
            out.print(t)
            return 0

        rc = run_guarded(body)
        if rc:
            raise typer.Exit(rc)
