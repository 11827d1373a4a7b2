"""`llmpress ab start|list|report|stop`: A/B tests between aliases or artifacts, judged by user feedback."""

from __future__ import annotations

from pathlib import Path

import typer

from llmpress.cli.common import out, print_json, run_guarded


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def register(app: typer.Typer) -> None:
    ab = typer.Typer(help="A/B tests: weighted arms, sticky per user, judged by feedback.", no_args_is_help=True)
    app.add_typer(ab, name="ab")

    @ab.command("start")
    def start(name: str = typer.Argument(..., help="test name"),
              arms: str = typer.Option(..., help="ARM=WEIGHT list of aliases or artifacts, e.g. prod=90,canary=10"),
              alias: str = typer.Option("", help="alias that `ab stop --promote` moves (default: the first arm, "
                                                 "if it is an alias)"),
              as_json: bool = typer.Option(False, "--json")) -> None:
        """Start an A/B test; each arm is pinned to the artifact it names now."""

        def body() -> None:
            from llmpress.ops import ab as abm

            test = abm.start(name, abm.parse_arms(arms), alias or None)
            if as_json:
                print_json({"name": test.name, "alias": test.alias, "arms": [a.__dict__ for a in test.arms]})
                return
            parts = ", ".join(f"{a.name}={a.weight} ({a.artifact_id})" for a in test.arms)
            out.print(f"A/B test [bold]{test.name}[/] running: {parts}; promotes into alias {test.alias or '-'}")

        run_guarded(body)

    @ab.command("list")
    def list_(as_json: bool = typer.Option(False, "--json")) -> None:
        """Every A/B test and its status."""

        def body() -> None:
            from rich.table import Table

            from llmpress.ops.ab import list_tests

            rows = list_tests()
            if as_json:
                print_json(rows)
                return
            t = Table("name", "status", "arms", "alias", "promoted", "started")
            for r in rows:
                t.add_row(r["name"], r["status"], ",".join(f"{k}={v}" for k, v in r["arms"].items()),
                          r["alias"] or "-", r["promoted"] or "-", str(r["started_at"])[:19])
            out.print(t)

        run_guarded(body)

    @ab.command("report")
    def report(name: str = typer.Argument(..., help="test name"),
               png: Path = typer.Option(None, help="also write a PNG plot here"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Per arm: requests, errors, TTFT / latency p50 / p99, tokens/s, feedback mean with 95 % CI; and the
        significance of each arm against the first (z-test for 0/1 ratings, Mann-Whitney for scores)."""

        def body() -> None:
            from rich.table import Table

            from llmpress.ops.ab import plot
            from llmpress.ops.ab import report as make_report

            rep = make_report(name)
            if png is not None:
                plot(rep, png)
            if as_json:
                print_json(rep.to_dict())
                return
            t = Table("arm", "artifact", "requests", "errors", "ttft p50/p99 ms", "latency p50/p99 ms", "tok/s",
                      "feedback n", "mean [95% CI]", title=f"A/B test {rep.name} ({rep.status})")
            for a in rep.arms:
                ci = f" [{a.feedback_ci95[0]:.3f}, {a.feedback_ci95[1]:.3f}]" if a.feedback_ci95 else ""
                t.add_row(a.arm, a.artifact_id, str(a.requests), str(a.errors),
                          f"{_fmt(a.ttft_p50_ms)} / {_fmt(a.ttft_p99_ms)}",
                          f"{_fmt(a.latency_p50_ms)} / {_fmt(a.latency_p99_ms)}", _fmt(a.tokens_per_s),
                          str(a.feedback_n), _fmt(a.feedback_mean, 3) + ci)
            out.print(t)
            for c in rep.comparisons:
                need = f", needs ~{c.n_needed_per_arm}/arm for this gap" if c.n_needed_per_arm else ""
                out.print(f"{c.arm} vs {c.control}: {c.difference:+.3f} ({c.test}, p = {c.p_value:.3g}); "
                          f"detectable now: {c.mde:.3f}{need}")
            out.print(f"[bold]{rep.verdict}[/]")
            if png is not None:
                out.print(f"plot: {png}")

        run_guarded(body)

    @ab.command("stop")
    def stop(name: str = typer.Argument(..., help="test name"),
             promote: str = typer.Option("", help="arm whose artifact the test's alias moves to"),
             as_json: bool = typer.Option(False, "--json")) -> None:
        """Stop a test; with --promote ARM, point the alias at that arm's artifact."""

        def body() -> None:
            from llmpress.ops.ab import stop as do_stop

            test = do_stop(name, promote or None)
            if as_json:
                print_json({"name": test.name, "status": test.status, "promoted": test.promoted, "alias": test.alias})
            elif promote:
                out.print(f"stopped {test.name}; alias {test.alias} -> {test.arm(promote).artifact_id} (arm {promote})")
            else:
                out.print(f"stopped {test.name}")

        run_guarded(body)
