"""`llmpress keys create | list | revoke | rotate`: API keys for the server (secrets shown once)."""

from __future__ import annotations

import typer

from llmpress.cli.common import console, out, print_json, run_guarded


def register(app: typer.Typer) -> None:
    keys = typer.Typer(help="API keys for `llmpress serve` (stored hashed in the registry).", no_args_is_help=True)
    app.add_typer(keys, name="keys")

    def _show_secret(info: object, secret: str, as_json: bool) -> None:
        if as_json:
            print_json({"id": info.id, "name": info.name, "scopes": info.scopes, "secret": secret})  # type: ignore[attr-defined]
            return
        out.print(f"key [bold]{info.id}[/] ({info.name}), scopes {', '.join(info.scopes)}")  # type: ignore[attr-defined]
        out.print(f"secret: [bold green]{secret}[/]", highlight=False)
        console.print("[yellow]store it now: it is shown only once[/]")

    @keys.command("create")
    def create(name: str = typer.Argument(..., help="a label, e.g. the client's name"),
               scopes: str = typer.Option("completions,chat,models", help="comma list: completions,chat,models,admin"),
               expires_days: float = typer.Option(0, help="days until expiry (0: never)"),
               rpm: int = typer.Option(0, help="requests per minute (0: unlimited)"),
               tpm: int = typer.Option(0, help="tokens per minute (0: unlimited)"),
               budget: int = typer.Option(0, help="total token budget (0: unlimited)"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Create a key and print its secret once."""

        def body() -> None:
            from llmpress.registry.keys import KeyStore

            info, secret = KeyStore().create(name, [s.strip() for s in scopes.split(",") if s.strip()],
                                             expires_days or None, rpm or None, tpm or None, budget or None)
            _show_secret(info, secret, as_json)

        run_guarded(body)

    @keys.command("list")
    def list_(as_json: bool = typer.Option(False, "--json")) -> None:
        """List keys (never their secrets)."""

        def body() -> None:
            from rich.table import Table

            from llmpress.registry.keys import KeyStore

            rows = KeyStore().list()
            if as_json:
                print_json(rows)
                return
            t = Table("id", "name", "status", "scopes", "rpm", "tpm", "budget", "used", "expires")
            for r in rows:
                t.add_row(r["id"], r["name"], r["status"], ",".join(r["scopes"]), str(r["requests_per_minute"] or "-"),
                          str(r["tokens_per_minute"] or "-"), str(r["token_budget"] or "-"), str(r["tokens_used"]),
                          str(r["expires_at"] or "never"))
            out.print(t)

        run_guarded(body)

    @keys.command("revoke")
    def revoke(key: str = typer.Argument(..., help="key id or name"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Revoke a key: it stops working at once."""

        def body() -> None:
            from llmpress.registry.keys import KeyStore

            info = KeyStore().revoke(key)
            if as_json:
                print_json({"id": info.id, "revoked": True})
            else:
                out.print(f"revoked key {info.id} ({info.name})")

        run_guarded(body)

    @keys.command("rotate")
    def rotate(key: str = typer.Argument(..., help="key id or name"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Give a key a new secret (same id, limits and usage); the old secret stops working."""

        def body() -> None:
            from llmpress.registry.keys import KeyStore

            info, secret = KeyStore().rotate(key)
            _show_secret(info, secret, as_json)

        run_guarded(body)
