"""`llmpress backup OUT` and `llmpress restore ARCHIVE`: the registry and the artifacts, in one verified archive."""

from __future__ import annotations

from pathlib import Path

import typer

from llmpress.cli.common import console, out, print_json, progress, run_guarded


def register(app: typer.Typer) -> None:
    @app.command("backup")
    def backup(dest: Path = typer.Argument(..., help="archive to write: NAME.tar, or NAME.tar.gz to compress"),
               aliased_only: bool = typer.Option(False, "--aliased-only",
                                                 help="only artifacts an alias or a running A/B test points at"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Back up the registry (consistent snapshot) and the artifacts (sha256-verified) into one archive."""

        def body() -> None:
            from llmpress.ops.backup import BackupConfig
            from llmpress.ops.backup import backup as do_backup

            with progress() as p:
                task = p.add_task("backing up", total=None)
                rep = do_backup(BackupConfig(dest, aliased_only), progress=lambda name, n: p.advance(task))
            for s in rep.skipped:
                console.print(f"[yellow]skipped[/] {s}")
            if as_json:
                print_json(rep.to_dict())
            else:
                out.print(f"wrote {rep.path}: {rep.database} registry, {len(rep.artifacts)} artifacts, "
                          f"{rep.files} files, {rep.bytes / 2**20:.1f} MiB")

        run_guarded(body)

    @app.command("restore")
    def restore(archive: Path = typer.Argument(..., help="an archive written by `llmpress backup`"),
                force: bool = typer.Option(False, "--force", help="replace a home that already has artifacts or keys"),
                as_json: bool = typer.Option(False, "--json")) -> None:
        """Restore a backup into the current LLMPRESS_HOME / registry after verifying every checksum."""

        def body() -> None:
            from llmpress.ops.backup import check_target, verify_archive
            from llmpress.ops.backup import restore as do_restore

            with console.status("verifying every checksum in the archive"):
                index = verify_archive(archive)
            check_target(index, force)
            with progress() as p:
                task = p.add_task("restoring", total=None)
                rep = do_restore(archive, force=force, progress=lambda name, n: p.advance(task), index=index)
            if as_json:
                print_json(rep.to_dict())
            else:
                out.print(f"restored {len(rep.artifacts)} artifacts ({rep.files} files, {rep.bytes / 2**20:.1f} MiB) "
                          f"and the {rep.database} registry into {rep.home}")

        run_guarded(body)
