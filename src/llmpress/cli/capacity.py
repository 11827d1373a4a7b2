"""`llmpress capacity --artifact ID --qps Q --p99-ttft-ms T`: replicas and machines from a measured curve.

(Meant to live at `llmpress plan capacity` once the `plan` group exists; the function below is what
both names call.)
"""

from __future__ import annotations

from typing import Any

import typer

from llmpress.cli.common import console, out, print_json, progress, run_guarded


def capacity_command(artifact: str, qps: float, p99_ttft_ms: float, curve: str | None, headroom: float,
                     threads_per_replica: int, cores_per_machine: int | None, requests: int, output_len: int,
                     prompt_len: int, as_json: bool) -> None:
    """Plan capacity; the curve comes from --curve, else benchmarks/results/serving.json, else a measurement."""

    def body() -> None:
        from llmpress.scale.capacity import (
            CapacityConfig,
            curve_from_file,
            default_serving_results,
            measure_curve,
            plan_capacity,
        )
        from llmpress.sources import resolve

        cfg = CapacityConfig(qps=qps, p99_ttft_ms=p99_ttft_ms, headroom=headroom,
                             threads_per_replica=threads_per_replica, cores_per_machine=cores_per_machine)
        art = resolve(artifact)
        c = None
        if curve:
            c = curve_from_file(curve, art.id)
        else:
            serving = default_serving_results()
            if serving.is_file():
                from llmpress.errors import DataError

                try:
                    c = curve_from_file(serving, art.id)
                except DataError:
                    c = None
            if c is None:
                console.print(f"no measured curve for {art.name} ({art.id}): measuring one replica here "
                              f"({threads_per_replica} thread(s), {requests} requests per level)")
                with progress() as p:
                    c = measure_curve(art, requests_per_level=requests, prompt_len=prompt_len, output_len=output_len,
                                      threads=threads_per_replica, progress=p)
        plan = plan_capacity(c, cfg)
        if as_json:
            print_json({"artifact": art.id, "qps": qps, "p99_ttft_ms": p99_ttft_ms, **plan.to_dict()})
            return
        from rich.table import Table

        t = Table(title=f"one replica of {art.name} ({art.id})")
        for col in ("clients", "req/s", "TTFT p50 ms", "TTFT p99 ms", "tok/s"):
            t.add_column(col, justify="right")
        for pt in c.points:
            t.add_row(str(pt.concurrency), f"{pt.rps:.2f}", "-" if pt.ttft_p50_ms is None else f"{pt.ttft_p50_ms:.0f}",
                      f"{pt.ttft_p99_ms:.0f}", "-" if pt.tok_s is None else f"{pt.tok_s:.1f}")
        out.print(t)
        out.print(f"[bold]{plan.replicas} replica(s) on {plan.machines} machine(s)[/] for {qps:g} req/s at p99 TTFT "
                  f"<= {p99_ttft_ms:g} ms ({plan.planned_rps_per_replica:.2f} req/s planned per replica, "
                  f"{plan.replicas_per_machine} per machine; limited by {plan.limited_by})")
        out.print("assumptions:")
        for a in plan.assumptions:
            out.print(f"  - {a}", highlight=False)

    run_guarded(body)


def register(app: typer.Typer) -> None:
    @app.command("capacity")
    def capacity(
        artifact: str = typer.Option(..., "--artifact", help="artifact id/name, builtin:NAME or HF dir"),
        qps: float = typer.Option(..., "--qps", help="requests per second to serve"),
        p99_ttft_ms: float = typer.Option(..., "--p99-ttft-ms", help="p99 time-to-first-token target (ms)"),
        curve: str = typer.Option(None, "--curve", help="JSON curve, benchmarks/results/serving.json or scale.json"),
        headroom: float = typer.Option(0.2, help="keep replicas this fraction below their limit"),
        threads_per_replica: int = typer.Option(1, help="torch threads (cores) per replica"),
        cores_per_machine: int = typer.Option(None, help="cores of a serving machine (default: this one's)"),
        requests: int = typer.Option(8, help="measurement: requests per concurrency level"),
        output_len: int = typer.Option(32, help="measurement: output tokens per request"),
        prompt_len: int = typer.Option(64, help="measurement: prompt tokens per request"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    ) -> Any:
        """Replicas and machines needed for a request rate at a p99 TTFT target, from a measured curve."""
        capacity_command(artifact, qps, p99_ttft_ms, curve, headroom, threads_per_replica, cores_per_machine,
                         requests, output_len, prompt_len, as_json)
