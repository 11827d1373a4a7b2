"""`llmpress cost estimate`: 12 months of cost for each API target and for self-hosting each registry artifact.

API: requests x (input tokens x input price + output tokens x output price).
Self-hosting: machine-hours needed from the throughput `llmpress eval` measured and stored on the artifact
(`metrics.speed`: prefill rate from TTFT, best decode tok/s over the measured batch sizes), at a target
utilisation, rounded up to whole machines, x the machine's USD/hour. Prefill is charged at its batch-1
rate (conservative: batched prefill is faster). Load is taken as uniform over the day.
Break-even: the requests/day where one machine's month costs what the API does; beyond one machine's
capacity it is the per-request comparison that decides.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmpress.errors import ConfigError
from llmpress.gateway.config import TargetConfig

HOURS_PER_MONTH = 730.0
DAYS_PER_MONTH = 30.42


@dataclass
class Workload:
    requests_per_day: float
    input_mean: float
    output_mean: float
    input_p95: float | None = None
    output_p95: float | None = None
    growth_pct_month: float = 0.0
    months: int = 12

    def __post_init__(self) -> None:
        if self.requests_per_day <= 0:
            raise ConfigError("--requests-per-day must be > 0", "pass e.g. --requests-per-day 10000")
        if self.input_mean < 0 or self.output_mean <= 0:
            raise ConfigError("token counts must be >= 0 (input) and > 0 (output)",
                              "pass e.g. --input-tokens 500,1200 --output-tokens 200,600")
        if self.growth_pct_month <= -100:
            raise ConfigError("--growth must be > -100 %/month", "pass e.g. --growth 5")

    def per_day(self, month: int) -> float:
        """Requests/day in month 0..months-1 (compound growth)."""
        return self.requests_per_day * (1 + self.growth_pct_month / 100) ** month


@dataclass
class Option:
    name: str
    kind: str  # api | self-host
    monthly_usd: list[float]
    monthly_usd_p95: list[float]
    total_usd: float
    detail: dict[str, Any] = field(default_factory=dict)


def parse_mean_p95(text: str, what: str) -> tuple[float, float | None]:
    """'500' or '500,1200' -> (mean, p95)."""
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--{what} must be MEAN or MEAN,P95 (numbers), got {text!r}",
                          f"e.g. --{what} 500,1200") from None
    if len(parts) not in (1, 2) or (len(parts) == 2 and parts[1] < parts[0]):
        raise ConfigError(f"--{what} must be MEAN or MEAN,P95 with P95 >= MEAN, got {text!r}", f"e.g. --{what} 500,1200")
    return parts[0], parts[1] if len(parts) == 2 else None


def api_option(t: TargetConfig, w: Workload) -> Option:
    per_req = (w.input_mean * t.price.input_per_mtok + w.output_mean * t.price.output_per_mtok) / 1e6
    per_req_p95 = ((w.input_p95 or w.input_mean) * t.price.input_per_mtok
                   + (w.output_p95 or w.output_mean) * t.price.output_per_mtok) / 1e6
    months = [w.per_day(m) * DAYS_PER_MONTH * per_req for m in range(w.months)]
    months95 = [w.per_day(m) * DAYS_PER_MONTH * per_req_p95 for m in range(w.months)]
    return Option(t.name, "api", months, months95, sum(months),
                  {"usd_per_request": per_req, "price": t.price.model_dump(), "local": t.local})


def artifact_throughput(metrics: dict[str, Any]) -> dict[str, float] | None:
    """Prefill tok/s (from TTFT) and best decode tok/s from an artifact's stored speed metrics, or None."""
    speed = (metrics or {}).get("speed") or {}
    decode = speed.get("decode") or {}
    best, best_b = 0.0, ""
    for b, v in decode.items():
        tok_s = ((v or {}).get("tok_s") or {}).get("median")
        if isinstance(tok_s, int | float) and tok_s > best:
            best, best_b = float(tok_s), b
    if best <= 0:
        return None
    ttft = (speed.get("ttft_s") or {}).get("median")
    n = speed.get("ttft_prompt_tokens") or speed.get("prompt_tokens")
    prefill = float(n) / float(ttft) if ttft and n else None
    return {"decode_tok_s": best, "decode_batch": best_b, "prefill_tok_s": prefill or best * 10}


def self_host_option(name: str, thr: dict[str, Any], w: Workload, usd_per_hour: float,
                     utilisation: float) -> Option:
    def sec_per_req(inp: float, outp: float) -> float:
        return inp / thr["prefill_tok_s"] + outp / thr["decode_tok_s"]

    s_mean = sec_per_req(w.input_mean, w.output_mean)
    s_p95 = sec_per_req(w.input_p95 or w.input_mean, w.output_p95 or w.output_mean)
    cap_per_day = 86400 * utilisation / s_mean  # requests one machine serves per day

    def cost(month: int, s: float) -> tuple[float, int]:
        machines = max(1, math.ceil(w.per_day(month) * s / (86400 * utilisation)))
        return machines * usd_per_hour * HOURS_PER_MONTH, machines

    months = [cost(m, s_mean) for m in range(w.months)]
    months95 = [cost(m, s_p95)[0] for m in range(w.months)]
    return Option(name, "self-host", [c for c, _ in months], months95, sum(c for c, _ in months),
                  {"machines_by_month": [n for _, n in months], "machine_usd_per_hour": usd_per_hour,
                   "utilisation": utilisation, "requests_per_day_per_machine": cap_per_day,
                   "marginal_usd_per_request": usd_per_hour * s_mean / 3600 / utilisation, **thr})


def break_even(api: Option, host: Option) -> dict[str, Any]:
    """Requests/day at which self-hosting costs what the API does."""
    per_req = api.detail["usd_per_request"]
    machine_month = host.detail["machine_usd_per_hour"] * HOURS_PER_MONTH
    cap = host.detail["requests_per_day_per_machine"]
    if per_req <= 0:
        return {"api": api.name, "self_host": host.name, "requests_per_day": None,
                "note": "the API target is free: self-hosting never breaks even"}
    n = machine_month / (DAYS_PER_MONTH * per_req)
    if n <= cap:
        return {"api": api.name, "self_host": host.name, "requests_per_day": n,
                "note": "one machine is cheaper above this volume"}
    if host.detail["marginal_usd_per_request"] < per_req:
        return {"api": api.name, "self_host": host.name, "requests_per_day": n,
                "note": "needs several machines; cheaper at scale (per-request cost lower than the API's)"}
    return {"api": api.name, "self_host": host.name, "requests_per_day": None,
            "note": "the API is cheaper per request than this machine at any volume"}


def forecast(targets: list[TargetConfig], artifacts: list[tuple[str, dict[str, Any]]], w: Workload,
             usd_per_hour: float, utilisation: float = 0.7) -> dict[str, Any]:
    """Every option's monthly cost, the skipped artifacts (no speed metrics) and break-even volumes."""
    if usd_per_hour <= 0:
        raise ConfigError("--machine-usd-per-hour must be > 0", "pass your machine's price, e.g. 0.40")
    if not 0 < utilisation <= 1:
        raise ConfigError("--utilisation must be in (0, 1]", "e.g. 0.7")
    apis = [api_option(t, w) for t in targets]
    hosts, skipped = [], []
    for name, metrics in artifacts:
        thr = artifact_throughput(metrics)
        if thr is None:
            skipped.append(name)
        else:
            hosts.append(self_host_option(name, thr, w, usd_per_hour, utilisation))
    return {"workload": asdict(w), "options": [asdict(o) for o in apis + hosts],
            "break_even": [break_even(a, h) for a in apis for h in hosts],
            "skipped_artifacts": skipped,
            "assumptions": {"days_per_month": DAYS_PER_MONTH, "hours_per_month": HOURS_PER_MONTH,
                            "utilisation": utilisation, "load": "uniform over the day",
                            "prefill": "batch-1 rate from the measured TTFT (conservative)"}}


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for o in result["options"]:
        xs = list(range(1, len(o["monthly_usd"]) + 1))
        style = "-" if o["kind"] == "api" else "--"
        ax.plot(xs, o["monthly_usd"], style, marker="o", ms=3, label=f"{o['name']} ({o['kind']})")
    ax.set_xlabel("month")
    ax.set_ylabel("USD / month")
    ax.set_yscale("symlog", linthresh=1.0)
    w = result["workload"]
    ax.set_title(f"{w['requests_per_day']:g} req/day, {w['input_mean']:g} in / {w['output_mean']:g} out tokens, "
                 f"+{w['growth_pct_month']:g}%/month", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
