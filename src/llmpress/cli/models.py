"""`llmpress models list`: the built-in models and the cached model artifacts."""

from __future__ import annotations

import typer

from llmpress.cli.common import out, print_json, run_guarded

models_app = typer.Typer(help="Built-in and cached models.", no_args_is_help=True)


@models_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show built-ins (and whether each is converted yet) and cached model artifacts."""

    def body() -> None:
        from rich.table import Table

        from llmpress.artifact import MANIFEST, Artifact
        from llmpress.sources.builtin import BUILTINS, cached_path, models_dir

        rows = []
        for name, b in BUILTINS.items():
            cached = (cached_path(name) / MANIFEST).is_file()
            rows.append({"model": f"builtin:{name}", "cached": cached, "path": str(cached_path(name)) if cached else "",
                         "description": b.description})
        builtin_dirs = {cached_path(n) for n in BUILTINS}
        for d in sorted(models_dir().iterdir()):
            if d in builtin_dirs or not (d / MANIFEST).is_file():
                continue
            art = Artifact.open(d, verify=False)
            rows.append({"model": art.id, "cached": True, "path": str(d), "description": art.name})
        if as_json:
            print_json(rows)
            return
        t = Table(title="models")
        for col in ("model", "cached", "description", "path"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["model"], "yes" if r["cached"] else "no (converted on first use)", r["description"], r["path"])
        out.print(t)

    run_guarded(body)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
