"""Capacity planning: how many replicas (and machines) serve Q requests/s with p99 TTFT under T ms.

The input is one replica's measured curve: at each concurrency (clients sending back to back), the
requests/s it completed and its p99 time to first token. The sustainable rate of a replica is the
highest rate whose p99 TTFT stays under the target (linear interpolation between measured points,
where TTFT crosses the target); replicas = ceil(Q / (rate x (1 - headroom))); machines = ceil(replicas
/ replicas per machine), with replicas per machine = cores // threads per replica.

Curves come from `benchmarks/serving.py` results (`serving.json`, matched by artifact id),
`benchmarks/scale.py` results, a JSON list of points (`--curve`), or a short measurement here: the
engine in this process, closed-loop clients at a few concurrencies, fixed prompt and output lengths.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmpress.errors import ConfigError, DataError


@dataclass
class CurvePoint:
    """One replica at one concurrency: completed requests/s and TTFT percentiles (ms)."""

    concurrency: int
    rps: float
    ttft_p99_ms: float
    ttft_p50_ms: float | None = None
    tok_s: float | None = None


@dataclass
class Curve:
    points: list[CurvePoint]
    source: str
    prompt_len: int | None = None
    output_len: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.points:
            raise DataError(f"the throughput/latency curve from {self.source} has no points",
                            "measure one (omit --curve) or run benchmarks/serving.py for this artifact")
        for p in self.points:
            if p.rps <= 0 or p.ttft_p99_ms < 0 or p.concurrency < 1:
                raise DataError(f"bad curve point {asdict(p)} in {self.source}",
                                "each point needs concurrency >= 1, rps > 0, ttft_p99_ms >= 0")
        self.points.sort(key=lambda p: p.concurrency)


@dataclass
class CapacityConfig:
    """The requirement and the deployment assumptions."""

    qps: float
    p99_ttft_ms: float
    headroom: float = 0.2  # keep each replica this far below its limit (bursts, a replica being replaced)
    threads_per_replica: int = 1
    cores_per_machine: int | None = None  # None: this machine's

    def __post_init__(self) -> None:
        if self.qps <= 0:
            raise ConfigError(f"--qps must be > 0, got {self.qps}", "pass e.g. --qps 20", param="qps")
        if self.p99_ttft_ms <= 0:
            raise ConfigError(f"--p99-ttft-ms must be > 0, got {self.p99_ttft_ms}", "pass e.g. --p99-ttft-ms 500",
                              param="p99_ttft_ms")
        if not 0 <= self.headroom < 1:
            raise ConfigError(f"--headroom must be in [0, 1), got {self.headroom}", "pass e.g. --headroom 0.2",
                              param="headroom")
        if self.threads_per_replica < 1:
            raise ConfigError("--threads-per-replica must be >= 1", "pass --threads-per-replica 1",
                              param="threads_per_replica")

    @property
    def cores(self) -> int:
        return self.cores_per_machine or os.cpu_count() or 1


@dataclass
class CapacityPlan:
    replicas: int
    machines: int
    replicas_per_machine: int
    per_replica_rps: float  # sustainable at the target, before headroom
    planned_rps_per_replica: float  # after headroom
    operating_concurrency: float
    limited_by: str  # "ttft" (the target binds) or "throughput" (every measured point meets it)
    curve: Curve
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"]["points"] = [asdict(p) for p in self.curve.points]
        return d


def sustainable_rate(curve: Curve, p99_ttft_ms: float) -> tuple[float, float, str]:
    """(requests/s, concurrency, what binds) one replica sustains with p99 TTFT <= the target."""
    pts = curve.points
    if pts[0].ttft_p99_ms > p99_ttft_ms:
        raise ConfigError(f"one replica's p99 TTFT is {pts[0].ttft_p99_ms:.0f} ms already at concurrency "
                          f"{pts[0].concurrency}, above the {p99_ttft_ms:.0f} ms target: no number of replicas meets it",
                          "relax --p99-ttft-ms, or serve a smaller / quantized artifact or on faster machines",
                          param="p99_ttft_ms")
    best = (pts[0].rps, float(pts[0].concurrency), "ttft")
    for a, b in zip(pts, pts[1:], strict=False):
        if b.ttft_p99_ms <= p99_ttft_ms:
            if b.rps > best[0]:
                best = (b.rps, float(b.concurrency), "ttft")
            continue
        # the target is crossed between a and b: interpolate linearly in TTFT
        f = (p99_ttft_ms - a.ttft_p99_ms) / (b.ttft_p99_ms - a.ttft_p99_ms) if b.ttft_p99_ms > a.ttft_p99_ms else 0.0
        rps = a.rps + f * (b.rps - a.rps)
        if rps > best[0]:
            best = (rps, a.concurrency + f * (b.concurrency - a.concurrency), "ttft")
        return best
    return best[0], best[1], "throughput"


def plan_capacity(curve: Curve, cfg: CapacityConfig) -> CapacityPlan:
    """Replicas and machines for `cfg.qps` at `cfg.p99_ttft_ms`, from one replica's curve."""
    rate, conc, binds = sustainable_rate(curve, cfg.p99_ttft_ms)
    planned = rate * (1 - cfg.headroom)
    replicas = max(1, math.ceil(cfg.qps / planned - 1e-9))
    per_machine = max(1, cfg.cores // cfg.threads_per_replica)
    machines = math.ceil(replicas / per_machine)
    last = curve.points[-1]
    assumptions = [
        f"curve: {curve.source}" + (f" (prompt {curve.prompt_len} / output {curve.output_len} tokens"
                                    f"{f', {curve.threads} thread(s)' if curve.threads else ''})"
                                    if curve.prompt_len else ""),
        "requests look like the measured ones (same prompt and output lengths); longer ones cost proportionally more",
        "replicas scale linearly: the load balancer spreads requests evenly and nothing is shared "
        "(each replica has its own cores, memory bandwidth and KV cache)",
        f"one replica sustains {rate:.2f} req/s at p99 TTFT <= {cfg.p99_ttft_ms:.0f} ms "
        f"(concurrency ~{conc:.1f}); planned at {planned:.2f} req/s with {cfg.headroom:.0%} headroom",
        f"a machine has {cfg.cores} cores and runs {per_machine} replica(s) of {cfg.threads_per_replica} "
        "thread(s) each; machines like the one measured",
        "closed-loop measurement (clients send back to back); open-loop Poisson arrivals queue more at the "
        "same mean rate, which the headroom is for",
        "Ray Serve adds a few ms per request (gateway + replica hops: see benchmarks/scale.py)",
    ]
    if binds == "throughput":
        assumptions.append(f"every measured point met the TTFT target: the rate is the curve's peak "
                           f"({last.rps:.2f} req/s at concurrency {last.concurrency}); a longer curve may allow more")
    return CapacityPlan(replicas=replicas, machines=machines, replicas_per_machine=per_machine,
                        per_replica_rps=rate, planned_rps_per_replica=planned, operating_concurrency=conc,
                        limited_by=binds, curve=curve, assumptions=assumptions)


# -- where curves come from --------------------------------------------------------------------
def curve_from_file(path: str | Path, artifact_id: str | None = None) -> Curve:
    """A JSON curve: a list of points, {"points": [...]}, a benchmarks/serving.json or benchmarks/scale.json."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"no curve file at {p}", "pass the path of a JSON curve or of benchmarks/results/serving.json")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise DataError(f"{p} is not valid JSON ({e})", "pass a JSON curve file") from e
    if isinstance(data, dict) and "engine" in data:  # benchmarks/serving.py
        curve = _from_serving(data, artifact_id, str(p))
        if curve is None:
            raise DataError(f"{p} has no serving measurement of artifact {artifact_id}",
                            "run benchmarks/serving.py on it, or omit --curve to measure here")
        return curve
    if isinstance(data, dict) and "replica_curve" in data:  # benchmarks/scale.py
        data = data["replica_curve"]
    pts = data.get("points") if isinstance(data, dict) else data
    if not isinstance(pts, list):
        raise DataError(f"{p} holds no list of curve points", 'use [{"concurrency": 1, "rps": 2.0, "ttft_p99_ms": 80}, ...]')
    try:
        points = [CurvePoint(concurrency=int(x["concurrency"]), rps=float(x["rps"]), ttft_p99_ms=float(x["ttft_p99_ms"]),
                             ttft_p50_ms=x.get("ttft_p50_ms"), tok_s=x.get("tok_s")) for x in pts]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"a curve point in {p} lacks concurrency / rps / ttft_p99_ms ({e})",
                        'use [{"concurrency": 1, "rps": 2.0, "ttft_p99_ms": 80}, ...]') from e
    meta = data if isinstance(data, dict) else {}
    return Curve(points, str(p), meta.get("prompt_len"), meta.get("output_len"), meta.get("threads"))


def _from_serving(data: dict[str, Any], artifact_id: str | None, source: str) -> Curve | None:
    for e in data.get("engine", []):
        if artifact_id is None or e.get("artifact") == artifact_id:
            pts = [CurvePoint(concurrency=int(r["concurrency"]), rps=r["requests"] / r["seconds"],
                              ttft_p99_ms=r["ttft_p99_ms"], ttft_p50_ms=r.get("ttft_p50_ms"), tok_s=r.get("tok_s"))
                   for r in e.get("http", {}).values()]
            return Curve(pts, f"{source} ({e.get('label')})", data.get("prompt_len"), data.get("output_len"),
                         data.get("threads"))
    return None


def default_serving_results() -> Path:
    return Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "serving.json"


def measure_curve(artifact: Any, concurrencies: tuple[int, ...] = (1, 2, 4, 8), requests_per_level: int = 8,
                  prompt_len: int = 64, output_len: int = 32, threads: int = 1, kv_cache_mb: float = 64.0,
                  progress: Any = None) -> Curve:
    """A short measurement of one replica: the engine in this process, `c` sequences kept in flight.

    Closed loop: when a request finishes the next starts, `requests_per_level` per level (at least c).
    TTFT is the engine's arrival-to-first-token time; HTTP adds ~1-10 ms (benchmarks/serving.py)."""
    import torch

    from llmpress.engine import LLMEngine, SamplingParams

    torch.set_num_threads(threads)
    engine = LLMEngine.from_artifact(artifact, max_batch=max(concurrencies), kv_cache_mb=kv_cache_mb,
                                     enable_prefix_caching=False, num_threads=threads)  # as `llmpress serve` does
    vocab = int(getattr(engine.runner.model.config, "vocab_size", 1000))
    n_prompt = min(prompt_len, engine.max_model_len - output_len - 1)

    def prompt(i: int) -> list[int]:
        g = torch.Generator().manual_seed(i)
        return torch.randint(10, max(11, vocab - 10), (n_prompt,), generator=g).tolist()

    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    engine.add_request(prompt(0), SamplingParams(max_tokens=2, ignore_eos=True))  # warm-up
    while engine.has_work():
        engine.step()
    points = []
    task = progress.add_task("measuring", total=len(concurrencies)) if progress is not None else None
    for c in concurrencies:
        n = max(c, requests_per_level)
        started, done, ttfts = 0, [], []
        live: list[Any] = []
        t0 = time.perf_counter()
        while len(done) < n:
            while len(live) < c and started < n:
                live.append(engine.add_request(prompt(1000 * c + started), params))
                started += 1
            engine.step()
            for s in [s for s in live if s.is_finished]:
                live.remove(s)
                done.append(s)
                ttfts.append(1000 * (s.ttft or 0.0))
        dt = time.perf_counter() - t0
        ttfts.sort()
        points.append(CurvePoint(concurrency=c, rps=n / dt, ttft_p99_ms=ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))],
                                 ttft_p50_ms=ttfts[len(ttfts) // 2], tok_s=n * output_len / dt))
        if progress is not None:
            progress.update(task, advance=1)
    return Curve(points, f"measured here on {artifact.id} ({requests_per_level} requests per level, engine only)",
                 n_prompt, output_len, threads)
