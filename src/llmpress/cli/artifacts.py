"""`llmpress artifacts list | show | lineage | rm`: what the registry knows."""

from __future__ import annotations

import json

import typer

from llmpress.cli.common import console, out, print_json, run_guarded

artifacts_app = typer.Typer(help="Artifacts in the registry.", no_args_is_help=True)


def _headline(metrics: dict) -> tuple[str, str, str]:
    q, s, z = metrics.get("quality", {}), metrics.get("speed", {}), metrics.get("size", {})
    ppl = f"{q['perplexity']:.3f}" if "perplexity" in q else ""
    b1 = s.get("decode", {}).get("b1", {}).get("tok_s", {}).get("median")
    mb = z.get("mb_on_disk")
    return ppl, f"{b1:.1f}" if b1 else "", f"{mb:.1f}" if mb else ""


@artifacts_app.command("list")
def list_artifacts(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every registered artifact: id, name, step, parent, headline metrics."""

    def body() -> None:
        from rich.table import Table

        from llmpress.registry import get_registry

        rows = get_registry().list()
        if as_json:
            print_json([{"id": r.id, "name": r.name, "format": r.format, "parent": r.parent_id, "step": r.step_name,
                         "path": r.path, "metrics": r.metrics, "created_at": r.created_at} for r in rows])
            return
        t = Table(title=f"artifacts ({len(rows)})")
        for col in ("id", "name", "format", "step", "parent", "ppl", "b1 tok/s", "MB"):
            t.add_column(col)
        for r in rows:
            t.add_row(r.id, r.name, r.format, r.step_name, r.parent_id or "", *_headline(r.metrics or {}))
        out.print(t)

    run_guarded(body)


@artifacts_app.command("show")
def show(ref: str = typer.Argument(..., help="Artifact id, id prefix or name.")) -> None:
    """The full manifest (and evaluations) of one artifact, as JSON."""

    def body() -> None:
        from llmpress.registry import get_registry

        reg = get_registry()
        row = reg.get(ref)
        evals = [{"kind": e.kind, "dataset": e.dataset, "created_at": e.created_at, "metrics": e.metrics}
                 for e in reg.evaluations(row.id)]
        print_json({"path": row.path, "manifest": row.manifest, "evaluations": evals})

    run_guarded(body)


@artifacts_app.command("lineage")
def lineage(ref: str = typer.Argument(..., help="Artifact id, id prefix or name."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """How an artifact was made: its chain of parents, newest first."""

    def body() -> None:
        from llmpress.registry import get_registry

        reg = get_registry()
        chain = reg.lineage(reg.get(ref).id)
        if as_json:
            print_json([json.loads(m.to_json()) for m in chain])
            return
        for depth, m in enumerate(chain):
            params = json.dumps(m.step.params, default=str)
            ppl, b1, mb = _headline(m.metrics)
            pad = "  " * depth + ("└─ " if depth else "")
            out.print(f"{pad}[bold]{m.id}[/] {m.name}  step={m.step.name} {params}"
                      + (f"  ppl={ppl}" if ppl else "") + (f"  b1={b1} tok/s" if b1 else "")
                      + (f"  {mb} MB" if mb else ""), highlight=False)

    run_guarded(body)


@artifacts_app.command("rm")
def rm(ref: str = typer.Argument(..., help="Artifact id, id prefix or name."),
       recursive: bool = typer.Option(False, "--recursive", "-r", help="Also remove every descendant."),
       keep_files: bool = typer.Option(False, "--keep-files", help="Unregister only; leave the directory.")) -> None:
    """Remove an artifact; refuses while it has children unless --recursive."""

    def body() -> None:
        from llmpress.registry import get_registry

        removed = get_registry().remove(ref, recursive=recursive, delete_files=not keep_files)
        console.print(f"removed {len(removed)} artifact(s): {', '.join(removed)}")

    run_guarded(body)


def register(app: typer.Typer) -> None:
    app.add_typer(artifacts_app, name="artifacts")
