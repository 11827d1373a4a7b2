"""`llmpress cost report | estimate | budget`: what the gateway spent, what a workload will cost, money budgets."""

from __future__ import annotations

from pathlib import Path

import typer

from llmpress.cli.common import console, out, print_json, run_guarded


def register(app: typer.Typer) -> None:
    cost = typer.Typer(help="Gateway cost: reports, 12-month forecasts, money budgets per API key.",
                       no_args_is_help=True)
    app.add_typer(cost, name="cost")

    @cost.command("report")
    def report(by: str = typer.Option("target", help="group by key | model | target | route | day"),
               since_days: float = typer.Option(0, "--since-days", help="only the last N days (0: all)"),
               out_dir: Path = typer.Option(Path("cost-report"), "--out", help="where CSV, JSON and PNG go"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Cost recorded by the gateway, grouped; writes cost_by_<by>.csv/.json/.png."""

        def body() -> None:
            from datetime import UTC, datetime, timedelta

            from rich.table import Table

            from llmpress.gateway.report import aggregate, write_report
            from llmpress.registry.cost import CostLedger

            since = datetime.now(UTC) - timedelta(days=since_days) if since_days else None
            rows = CostLedger().rows(since)
            table = aggregate(rows, by)
            paths = write_report(table, by, out_dir, since)
            if as_json:
                print_json({"by": by, "rows": table, "total_usd": sum(r["cost_nusd"] for r in table) / 1e9,
                            "files": {k: str(v) for k, v in paths.items()}})
                return
            t = Table(by, "requests", "errors", "tokens in", "tokens out", "cost USD", "p50 ms")
            for r in table:
                t.add_row(str(r[by]), str(r["requests"]), str(r["errors"]), str(r["tokens_in"]), str(r["tokens_out"]),
                          f"{r['cost_usd']:.4f}", f"{r['latency_p50_ms']:.0f}")
            t.add_row("total", str(sum(r["requests"] for r in table)), "", "", "",
                      f"{sum(r['cost_nusd'] for r in table) / 1e9:.4f}", "")
            out.print(t)
            console.print(f"wrote {', '.join(str(p) for p in paths.values())}")

        run_guarded(body)

    @cost.command("estimate")
    def estimate(
        requests_per_day: float = typer.Option(..., "--requests-per-day", help="requests per day now"),
        input_tokens: str = typer.Option(..., "--input-tokens", help="MEAN or MEAN,P95 prompt tokens"),
        output_tokens: str = typer.Option(..., "--output-tokens", help="MEAN or MEAN,P95 output tokens"),
        growth: float = typer.Option(0.0, "--growth", help="%/month growth of requests"),
        machine_usd_per_hour: float = typer.Option(0.40, "--machine-usd-per-hour",
                                                   help="price of one self-hosting machine"),
        utilisation: float = typer.Option(0.7, help="share of a machine's measured throughput you plan to use"),
        config: Path = typer.Option(None, "--config", "-c", help="gateway YAML: its targets are the API options"),
        out_dir: Path = typer.Option(Path("cost-estimate"), "--out", help="where estimate.json and .png go"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """12-month cost for every configured target and for self-hosting each evaluated registry artifact."""

        def body() -> None:
            import json

            from rich.table import Table

            from llmpress.errors import ConfigError
            from llmpress.gateway.config import load_config
            from llmpress.gateway.forecast import Workload, forecast, parse_mean_p95, plot
            from llmpress.registry import get_registry

            im, ip = parse_mean_p95(input_tokens, "input-tokens")
            om, op = parse_mean_p95(output_tokens, "output-tokens")
            w = Workload(requests_per_day, im, om, ip, op, growth)
            targets = load_config(config).targets if config else []
            arts = [(f"{r.name} ({r.id[:8]})", r.metrics or {}) for r in get_registry().list()]
            if not targets and not arts:
                raise ConfigError("nothing to estimate: no --config targets and no artifacts in the registry",
                                  "pass --config gateway.yaml, or `llmpress eval` an artifact")
            res = forecast(targets, arts, w, machine_usd_per_hour, utilisation)
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = out_dir / "estimate.json.tmp"
            tmp.write_text(json.dumps(res, indent=2))
            tmp.replace(out_dir / "estimate.json")
            png = plot(res, out_dir / "estimate.png") if res["options"] else None
            if as_json:
                print_json({**res, "files": {"json": str(out_dir / "estimate.json"), "png": str(png)}})
                return
            t = Table("option", "kind", "month 1 USD", "month 12 USD", "12-month USD", "p95-token 12-month USD",
                      "notes")
            for o in res["options"]:
                d = o["detail"]
                note = (f"${d['usd_per_request']:.6f}/request" if o["kind"] == "api" else
                        f"{d['decode_tok_s']:.0f} tok/s ({d['decode_batch']}), machines {d['machines_by_month'][0]}"
                        f"->{d['machines_by_month'][-1]}")
                t.add_row(o["name"], o["kind"], f"{o['monthly_usd'][0]:,.2f}", f"{o['monthly_usd'][-1]:,.2f}",
                          f"{o['total_usd']:,.2f}", f"{sum(o['monthly_usd_p95']):,.2f}", note)
            out.print(t)
            if res["break_even"]:
                b = Table("API target", "self-host", "break-even requests/day", "note")
                for x in res["break_even"]:
                    b.add_row(x["api"], x["self_host"], "-" if x["requests_per_day"] is None else
                              f"{x['requests_per_day']:,.0f}", x["note"])
                out.print(b)
            if res["skipped_artifacts"]:
                console.print(f"[yellow]no speed metrics (run `llmpress eval`) for:[/] "
                              f"{', '.join(res['skipped_artifacts'][:8])}")
            console.print(f"wrote {out_dir / 'estimate.json'}" + (f" and {png}" if png else ""))

        run_guarded(body)

    @cost.command("budget")
    def budget(key: str = typer.Argument(..., help="API key id or name"),
               usd: float = typer.Option(None, "--usd", help="money budget in USD (omit with --clear)"),
               clear: bool = typer.Option(False, "--clear", help="remove the money budget"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Set a key's money budget; the gateway refuses (402) requests whose worst case exceeds what is left."""

        def body() -> None:
            from llmpress.errors import ConfigError
            from llmpress.registry.cost import CostLedger

            if usd is None and not clear:
                raise ConfigError("pass --usd AMOUNT or --clear", "e.g. llmpress cost budget ci-bot --usd 25")
            b = CostLedger().set_budget(key, None if clear else usd)
            info = {"key_id": b.key_id, "budget_usd": None if b.budget_nusd is None else b.budget_nusd / 1e9,
                    "spent_usd": b.spent_nusd / 1e9}
            if as_json:
                print_json(info)
            else:
                shown = "none" if b.budget_nusd is None else f"${b.budget_nusd / 1e9:.2f}"
                out.print(f"key {b.key_id}: budget {shown}, spent ${b.spent_nusd / 1e9:.4f}")

        run_guarded(body)
