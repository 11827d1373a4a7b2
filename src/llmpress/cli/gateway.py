"""`llmpress gateway --config gateway.yaml` and `llmpress providers init|set|rotate|list|remove`."""

from __future__ import annotations

import os
import sys

import typer

from llmpress.cli.common import console, out, print_json, run_guarded


def _read_secret(from_env: str | None) -> str:
    from llmpress.errors import ConfigError

    if from_env:
        value = os.environ.get(from_env, "")
        if not value:
            raise ConfigError(f"environment variable {from_env} is empty or unset", f"export {from_env}=...")
        return value
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("provider key (input hidden): ")
    return sys.stdin.readline().strip()


def register(app: typer.Typer) -> None:
    @app.command("gateway")
    def gateway(
        config: str = typer.Option(..., "--config", "-c", help="gateway YAML (targets, routes); see examples/gateway.yaml"),
        host: str = typer.Option("127.0.0.1", help="bind address"),
        port: int = typer.Option(8080, help="TCP port"),
        no_auth: bool = typer.Option(False, "--no-auth", help="no client API keys (loopback binds only; no budgets)"),
        check: bool = typer.Option(False, "--check", help="validate the config and exit"),
        log_level: str = typer.Option("info", help="log level"),
    ) -> None:
        """An OpenAI-compatible gateway over local servers and API providers (keys, cost, budgets, routing)."""

        def body() -> None:
            import logging

            from llmpress.errors import ConfigError
            from llmpress.gateway.config import load_config
            from llmpress.server import is_loopback

            cfg = load_config(config)
            if check:
                out.print(f"{config}: ok — {len(cfg.targets)} target(s), {len(cfg.routes)} route(s)")
                return
            if no_auth and not is_loopback(host):
                raise ConfigError(f"refusing to run the gateway without API keys on {host}",
                                  "bind to 127.0.0.1 or drop --no-auth", param="host")
            import uvicorn

            from llmpress.gateway import create_gateway_app
            from llmpress.gateway.vault import install_log_redaction
            from llmpress.server.logs import setup_json_logging

            setup_json_logging(getattr(logging, log_level.upper(), logging.INFO))
            logging.getLogger("httpx").setLevel(logging.WARNING)
            install_log_redaction()
            gw = create_gateway_app(cfg, auth=not no_auth)
            for t in cfg.targets:
                console.print(f"target [bold]{t.name}[/] {t.url} {'local' if t.local else 'remote'} "
                              f"${t.price.input_per_mtok}/{t.price.output_per_mtok} per Mtok in/out")
            console.print(f"gateway on http://{host}:{port}/v1  routes: {', '.join(r.alias for r in cfg.routes)}")
            server = uvicorn.Server(uvicorn.Config(gw, host=host, port=port, log_level=log_level, access_log=False))
            server.run()
            if not server.started:
                raise ConfigError(f"the gateway could not start on {host}:{port}",
                                  "pick a free --port (another process may be listening there)", param="port")

        run_guarded(body)

    prov = typer.Typer(help="Provider API keys for gateway targets (encrypted in the registry).", no_args_is_help=True)
    app.add_typer(prov, name="providers")

    @prov.command("init")
    def init() -> None:
        """Create the vault master key file (mode 0600) unless LLMPRESS_MASTER_KEY is set."""

        def body() -> None:
            from llmpress.gateway.vault import create_master_key

            p = create_master_key()
            out.print(f"master key written to {p} (mode 600); back it up: vault keys cannot be read without it")

        run_guarded(body)

    @prov.command("set")
    def set_(target: str = typer.Argument(..., help="target name in the gateway config"),
             from_env: str = typer.Option(None, "--from-env", help="read the key from this environment variable"),
             as_json: bool = typer.Option(False, "--json")) -> None:
        """Store a target's provider key (read from stdin or --from-env; never from the command line)."""

        def body() -> None:
            from llmpress.gateway.vault import Vault

            fp = Vault().set(target, _read_secret(from_env))
            if as_json:
                print_json({"target": target, "fingerprint": fp})
            else:
                out.print(f"stored the key for {target} (sha256 {fp}…, encrypted)")

        run_guarded(body)

    @prov.command("rotate")
    def rotate(target: str = typer.Argument(..., help="target name"),
               from_env: str = typer.Option(None, "--from-env", help="read the new key from this environment variable"),
               grace: float = typer.Option(3600.0, help="seconds the previous key keeps working"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Make a new key current; the old one stays valid for --grace seconds. Running gateways pick it up within 1 s."""

        def body() -> None:
            from llmpress.gateway.vault import Vault

            fp = Vault().set(target, _read_secret(from_env), grace_s=grace, replace=True)
            if as_json:
                print_json({"target": target, "fingerprint": fp, "grace_s": grace})
            else:
                out.print(f"rotated the key for {target} (new sha256 {fp}…); the previous key works for {grace:g} s more")

        run_guarded(body)

    @prov.command("list")
    def list_(as_json: bool = typer.Option(False, "--json")) -> None:
        """Provider keys by target: fingerprint and status only, never the key."""

        def body() -> None:
            from datetime import UTC, datetime

            from rich.table import Table

            from llmpress.registry.cost import CostLedger

            now = datetime.now(UTC)
            rows = []
            for r in CostLedger().provider_keys():
                exp = r.expires_at.replace(tzinfo=UTC) if r.expires_at and r.expires_at.tzinfo is None else r.expires_at
                status = "current" if r.retired_at is None else ("grace" if exp and exp > now else "expired")
                rows.append({"target": r.target, "fingerprint": r.fingerprint, "status": status,
                             "created_at": r.created_at, "expires_at": r.expires_at})
            if as_json:
                print_json(rows)
                return
            t = Table("target", "sha256", "status", "created", "valid until")
            for r in rows:
                t.add_row(r["target"], r["fingerprint"] + "…", r["status"], str(r["created_at"])[:19],
                          str(r["expires_at"] or "-")[:19])
            out.print(t)

        run_guarded(body)

    @prov.command("remove")
    def remove(target: str = typer.Argument(..., help="target name")) -> None:
        """Delete every stored key of a target."""

        def body() -> None:
            from llmpress.registry.cost import CostLedger

            n = CostLedger().remove_provider_keys(target)
            out.print(f"removed {n} key(s) of {target}")

        run_guarded(body)
