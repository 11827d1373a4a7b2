"""`llmpress deploy ARTIFACT --alias NAME`, `llmpress deployments list|history ALIAS`, `llmpress rollback ALIAS`."""

from __future__ import annotations

import typer

from llmpress.cli.common import out, print_json, run_guarded


def _print_event(ev: object, as_json: bool) -> None:
    if as_json:
        print_json(ev.to_dict())  # type: ignore[attr-defined]
        return
    out.print(f"{ev.alias} -> [bold]{ev.artifact_id}[/] ({ev.artifact_name})  "  # type: ignore[attr-defined]
              f"version {ev.version}, {ev.action}")  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy(artifact: str = typer.Argument(..., help="artifact id / prefix / name, another alias, builtin:NAME or a dir"),
               alias: str = typer.Option(..., "--alias", help="the name to point at it: prod, canary, ..."),
               note: str = typer.Option("", help="why (kept in the history)"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Point an alias at an artifact; servers following the alias switch to it."""

        def body() -> None:
            from llmpress.ops.deployments import deploy as do_deploy

            _print_event(do_deploy(artifact, alias, note=note), as_json)

        run_guarded(body)

    @app.command("rollback")
    def rollback(alias: str = typer.Argument(..., help="the alias to move back"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
        """Move an alias back to the artifact it served before its current deploy."""

        def body() -> None:
            from llmpress.ops.deployments import rollback as do_rollback

            _print_event(do_rollback(alias), as_json)

        run_guarded(body)

    deps = typer.Typer(help="Aliases (prod, canary, ...) and their history.", no_args_is_help=True)
    app.add_typer(deps, name="deployments")

    @deps.command("list")
    def list_(as_json: bool = typer.Option(False, "--json")) -> None:
        """Every alias and the artifact it points at."""

        def body() -> None:
            from rich.table import Table

            from llmpress.ops.deployments import list_aliases

            rows = list_aliases()
            if as_json:
                print_json(rows)
                return
            t = Table("alias", "artifact", "name", "version", "last change", "at")
            for r in rows:
                t.add_row(r["alias"], r["artifact_id"], r["artifact_name"], str(r["version"]), str(r["action"]),
                          str(r["updated_at"])[:19])
            out.print(t)

        run_guarded(body)

    @deps.command("servers")
    def servers(all_: bool = typer.Option(False, "--all", help="include stopped servers"),
                as_json: bool = typer.Option(False, "--json")) -> None:
        """Server processes started by `llmpress serve` (running ones unless --all)."""

        def body() -> None:
            from rich.table import Table

            from llmpress.ops.deployments import servers as get_servers

            rows = get_servers(running_only=not all_)
            if as_json:
                print_json(rows)
                return
            t = Table("id", "alias", "artifact", "address", "started", "stopped")
            for r in rows:
                t.add_row(r["id"], r["alias"] or "-", r["artifact_id"], f"{r['host']}:{r['port']}",
                          str(r["started_at"])[:19], str(r["stopped_at"] or "running")[:19])
            out.print(t)

        run_guarded(body)

    @deps.command("history")
    def history(alias: str = typer.Argument(..., help="the alias"),
                as_json: bool = typer.Option(False, "--json")) -> None:
        """Every change of an alias, newest first (* marks the current one)."""

        def body() -> None:
            from rich.table import Table

            from llmpress.ops.deployments import history as get_history

            evs = get_history(alias)
            if as_json:
                print_json([e.to_dict() for e in evs])
                return
            t = Table("", "version", "action", "artifact", "name", "at", "note")
            for e in evs:
                t.add_row("*" if e.current else "", str(e.version), e.action, e.artifact_id, e.artifact_name,
                          e.created_at.isoformat()[:19], e.note)
            out.print(t)

        run_guarded(body)
