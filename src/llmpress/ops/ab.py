"""A/B tests that measure quality: weighted arms, sticky assignment per user, responses and feedback
stored in the registry, and a report that says which arm is better and whether that is significant.

Each arm is an alias or artifact, pinned to its artifact id when the test starts so the report
compares fixed models. A request's arm is a hash of (test, user) when the request names a user
(the same user always sees the same arm), random otherwise. The report compares every arm with
the first (the control): a two-proportion z-test when ratings are binary (thumbs 0/1), Mann-Whitney
U otherwise, plus the minimum detectable effect at the current sample size and the sample size per
arm the observed difference would need (alpha 0.05, power 0.8).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from llmpress.errors import ConfigError, DataError, NotFoundError, RegistryError
from llmpress.registry import Registry, get_registry
from llmpress.registry.ops import AbResponseRow, AbTestRow, FeedbackRow

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
ALPHA = 0.05
POWER = 0.8
FEEDBACK_TTL = timedelta(days=7)  # feedback on an older response is refused as expired


@dataclass
class Arm:
    name: str
    weight: int
    target: str  # the alias or artifact reference the user gave
    artifact_id: str  # pinned at start


@dataclass
class AbTest:
    """A loaded test: enough to assign requests without touching the database."""

    name: str
    arms: list[Arm]
    alias: str | None
    status: str = "running"
    promoted: str | None = None

    def assign(self, user: str | None, rng: random.Random | None = None) -> Arm:
        """The arm for a request: sticky per `user` (hash of test and user), weighted-random without one."""
        total = sum(a.weight for a in self.arms)
        if user:
            h = hashlib.sha256(f"{self.name}\0{user}".encode()).digest()
            point = int.from_bytes(h[:8], "big") % total
        else:
            point = (rng or random).randrange(total)
        for a in self.arms:
            if point < a.weight:
                return a
            point -= a.weight
        return self.arms[-1]

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise NotFoundError(f"A/B test {self.name!r} has no arm {name!r}",
                            f"use one of {', '.join(a.name for a in self.arms)}", param="arm")


def parse_arms(spec: str) -> list[tuple[str, int]]:
    """`prod=90,canary=10` -> [("prod", 90), ("canary", 10)]."""
    out: list[tuple[str, int]] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, w = part.partition("=")
        try:
            weight = int(w)
        except ValueError:
            weight = -1
        if not NAME.match(name.strip()) or weight <= 0:
            raise ConfigError(f"bad arm {part!r}", "write arms as NAME=WEIGHT with a positive integer weight, "
                              "e.g. --arms prod=90,canary=10", param="arms")
        out.append((name.strip(), weight))
    if len(out) < 2 or len({n for n, _ in out}) != len(out):
        raise ConfigError(f"an A/B test needs at least two distinct arms, got {spec!r}",
                          "e.g. --arms prod=90,canary=10", param="arms")
    return out


def _load(row: AbTestRow) -> AbTest:
    return AbTest(row.name, [Arm(**a) for a in row.arms], row.alias, row.status, row.promoted)


def start(name: str, arms: list[tuple[str, int]], alias: str | None = None,
          registry: Registry | None = None) -> AbTest:
    """Start a test; each arm (alias or artifact) is pinned to its current artifact id."""
    from llmpress.ops.deployments import alias_target

    reg = registry or get_registry()
    if not NAME.match(name or ""):
        raise ConfigError(f"A/B test name {name!r} is not valid", "use a letter then letters, digits, '.', '_' or '-'",
                          param="name")
    pinned = []
    for arm, weight in arms:
        artifact_id = alias_target(arm, reg) or reg.get(arm).id
        pinned.append(Arm(arm, weight, arm, artifact_id))
    if alias is None and alias_target(arms[0][0], reg) is not None:
        alias = arms[0][0]  # `--arms prod=90,canary=10`: promoting moves prod
    with reg.session.begin() as s:
        if s.get(AbTestRow, name) is not None:
            raise RegistryError(f"an A/B test named {name!r} already exists", "pick another name (`llmpress ab list`)")
        s.add(AbTestRow(name=name, alias=alias, arms=[asdict(a) for a in pinned], status="running",
                        started_at=datetime.now(UTC)))
    return AbTest(name, pinned, alias)


def load(name: str, registry: Registry | None = None) -> AbTest:
    reg = registry or get_registry()
    with reg.session() as s:
        row = s.get(AbTestRow, name)
    if row is None:
        raise NotFoundError(f"no A/B test {name!r}", "run `llmpress ab list` to see tests")
    return _load(row)


def running(registry: Registry | None = None) -> list[AbTest]:
    """Tests currently assigning traffic (what a server loads at start)."""
    reg = registry or get_registry()
    with reg.session() as s:
        return [_load(r) for r in s.scalars(select(AbTestRow).where(AbTestRow.status == "running"))]


def list_tests(registry: Registry | None = None) -> list[dict[str, Any]]:
    reg = registry or get_registry()
    with reg.session() as s:
        rows = list(s.scalars(select(AbTestRow).order_by(AbTestRow.started_at)))
    return [{"name": r.name, "status": r.status, "alias": r.alias, "promoted": r.promoted,
             "arms": {a["name"]: a["weight"] for a in r.arms}, "started_at": r.started_at} for r in rows]


def new_response_id() -> str:
    return "resp-" + uuid.uuid4().hex[:20]


def record_response(test: str, response_id: str, arm: str, user: str | None = None, status: int = 200,
                    ttft_ms: float | None = None, latency_ms: float = 0.0, tokens_out: int = 0,
                    registry: Registry | None = None) -> None:
    """One served response inside a test (the server calls this when a request finishes)."""
    reg = registry or get_registry()
    with reg.session.begin() as s:
        s.add(AbResponseRow(id=response_id, test=test, arm=arm, user=user, status=status, ttft_ms=ttft_ms,
                            latency_ms=latency_ms, tokens_out=tokens_out, created_at=datetime.now(UTC)))


def record_feedback(response_id: str, rating: float | None = None, label: str | None = None, comment: str = "",
                    registry: Registry | None = None, ttl: timedelta = FEEDBACK_TTL) -> dict[str, Any]:
    """Store feedback against the arm that produced `response_id` (`POST /v1/feedback`)."""
    reg = registry or get_registry()
    if rating is None and not label:
        raise DataError("feedback needs a rating or a label", "send {\"id\": ..., \"rating\": 1} or a \"label\"",
                        param="rating")
    if rating is not None and not math.isfinite(rating):
        raise DataError(f"rating {rating} is not a finite number", "send a number, e.g. 0/1 or 1-5", param="rating")
    if label is not None and len(label) > 255:
        raise DataError("label is longer than 255 characters", "send a short label", param="label")
    with reg.session.begin() as s:
        resp = s.get(AbResponseRow, response_id)
        if resp is None:
            raise NotFoundError(f"no response {response_id!r} to give feedback on",
                                "send the `id` of a response served inside an A/B test", param="id")
        test = s.get(AbTestRow, resp.test)
        created = resp.created_at if resp.created_at.tzinfo else resp.created_at.replace(tzinfo=UTC)
        if test is None or test.status != "running" or datetime.now(UTC) - created > ttl:
            e = NotFoundError(f"response {response_id!r} has expired for feedback "
                              f"({'its A/B test has stopped' if test is None or test.status != 'running' else 'too old'})",
                              "feedback is taken while the test runs and within "
                              f"{ttl.days} days of the response", param="id")
            e.http_status = 410
            raise e
        s.add(FeedbackRow(response_id=response_id, rating=rating, label=label, comment=comment or "",
                          created_at=datetime.now(UTC)))
        return {"id": response_id, "test": resp.test, "arm": resp.arm, "rating": rating, "label": label}


def stop(name: str, promote: str | None = None, registry: Registry | None = None) -> AbTest:
    """Stop a test; with `promote`, move the test's alias to that arm's pinned artifact."""
    from llmpress.ops.deployments import deploy

    reg = registry or get_registry()
    test = load(name, reg)
    if test.status != "running":
        raise RegistryError(f"A/B test {name!r} is already stopped", "start a new test to compare again")
    if promote is not None:
        arm = test.arm(promote)
        if test.alias is None:
            raise ConfigError(f"A/B test {name!r} has no alias to promote into",
                              "start tests whose first arm is an alias, or pass --alias to `ab start`")
        deploy(arm.artifact_id, test.alias, note=f"promoted arm {arm.name} of A/B test {name}", action="promote",
               registry=reg)
    with reg.session.begin() as s:
        row = s.get(AbTestRow, name)
        row.status, row.promoted, row.stopped_at = "stopped", promote, datetime.now(UTC)
    test.status, test.promoted = "stopped", promote
    return test


# -- statistics ---------------------------------------------------------------------------------
@dataclass
class ArmStats:
    arm: str
    artifact_id: str
    weight: int
    requests: int = 0
    errors: int = 0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    tokens_per_s: float | None = None
    feedback_n: int = 0
    feedback_mean: float | None = None
    feedback_ci95: tuple[float, float] | None = None
    labels: dict[str, int] = field(default_factory=dict)


@dataclass
class Comparison:
    """One arm against the control."""

    arm: str
    control: str
    test: str  # two-proportion z | mann-whitney u
    difference: float  # arm mean - control mean
    p_value: float
    significant: bool
    mde: float  # smallest difference this n detects with 80 % power at alpha 0.05
    n_needed_per_arm: int | None  # for the observed difference (None when it is 0)
    n_control: int = 0
    n_arm: int = 0

    @property
    def underpowered(self) -> bool:
        """Fewer ratings than the observed gap needs for 80 % power: a significant p may be a lucky draw."""
        return self.n_needed_per_arm is not None and min(self.n_control, self.n_arm) < self.n_needed_per_arm


@dataclass
class AbReport:
    name: str
    status: str
    binary: bool
    arms: list[ArmStats]
    comparisons: list[Comparison]
    winner: str | None  # the best arm when it beats the control significantly (or the control beats all)
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def _ci(values: list[float], binary: bool) -> tuple[float, float] | None:
    from scipy import stats

    n = len(values)
    if n == 0:
        return None
    mean = sum(values) / n
    if binary:  # Wilson score interval: sane at small n and near 0 or 1
        z = stats.norm.ppf(0.975)
        den = 1 + z * z / n
        mid = (mean + z * z / (2 * n)) / den
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / den
        return (mid - half, mid + half)
    if n < 2:
        return (mean, mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def compare(control: list[float], arm: list[float], binary: bool, arm_name: str = "b",
            control_name: str = "a") -> Comparison:
    """Significance of arm vs control, the MDE at these sample sizes, and the n the observed gap needs."""
    from scipy import stats

    n1, n2 = len(control), len(arm)
    za, zb = stats.norm.ppf(1 - ALPHA / 2), stats.norm.ppf(POWER)
    if n1 < 2 or n2 < 2:
        return Comparison(arm_name, control_name, "none", 0.0, 1.0, False, float("inf"), None, n1, n2)
    m1, m2 = sum(control) / n1, sum(arm) / n2
    diff = m2 - m1
    if binary:
        pooled = (sum(control) + sum(arm)) / (n1 + n2)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        p = 2 * stats.norm.sf(abs(diff) / se) if se > 0 else (0.0 if diff else 1.0)
        mde = (za + zb) * se
        var_sum = m1 * (1 - m1) + m2 * (1 - m2)
        kind = "two-proportion z"
    else:
        p = float(stats.mannwhitneyu(arm, control, alternative="two-sided").pvalue)
        v1 = sum((x - m1) ** 2 for x in control) / (n1 - 1)
        v2 = sum((x - m2) ** 2 for x in arm) / (n2 - 1)
        mde = (za + zb) * math.sqrt(v1 / n1 + v2 / n2)
        var_sum = v1 + v2
        kind = "mann-whitney u"
    needed = math.ceil((za + zb) ** 2 * var_sum / diff**2) if diff else None
    return Comparison(arm_name, control_name, kind, diff, float(p), bool(p < ALPHA), float(mde), needed, n1, n2)


def report(name: str, registry: Registry | None = None) -> AbReport:
    """Per arm: traffic, errors, TTFT and latency percentiles, tokens/s, feedback with a 95 % interval;
    then every arm against the control (the first arm)."""
    reg = registry or get_registry()
    test = load(name, reg)
    with reg.session() as s:
        responses = list(s.scalars(select(AbResponseRow).where(AbResponseRow.test == name)))
        feedback = list(s.execute(select(AbResponseRow.arm, FeedbackRow.rating, FeedbackRow.label)
                                  .join(FeedbackRow, FeedbackRow.response_id == AbResponseRow.id)
                                  .where(AbResponseRow.test == name)))
    ratings: dict[str, list[float]] = {a.name: [] for a in test.arms}
    stats_by_arm = {a.name: ArmStats(a.name, a.artifact_id, a.weight) for a in test.arms}
    for arm, rating, label in feedback:
        st = stats_by_arm.get(arm)
        if st is None:
            continue
        if rating is not None:
            ratings[arm].append(float(rating))
        if label:
            st.labels[label] = st.labels.get(label, 0) + 1
    all_ratings = [r for v in ratings.values() for r in v]
    binary = bool(all_ratings) and all(r in (0.0, 1.0) for r in all_ratings)
    for a in test.arms:
        st = stats_by_arm[a.name]
        rows = [r for r in responses if r.arm == a.name]
        ok = [r for r in rows if r.status < 400]
        st.requests, st.errors = len(rows), len(rows) - len(ok)
        ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]
        lat = [r.latency_ms for r in ok]
        st.ttft_p50_ms, st.ttft_p99_ms = _pct(ttft, 50), _pct(ttft, 99)
        st.latency_p50_ms, st.latency_p99_ms = _pct(lat, 50), _pct(lat, 99)
        secs = sum(lat) / 1000
        st.tokens_per_s = sum(r.tokens_out for r in ok) / secs if secs > 0 else None
        vals = ratings[a.name]
        st.feedback_n = len(vals)
        st.feedback_mean = sum(vals) / len(vals) if vals else None
        st.feedback_ci95 = _ci(vals, binary)
    control = test.arms[0].name
    comps = [compare(ratings[control], ratings[a.name], binary, a.name, control) for a in test.arms[1:]]
    winner, verdict = _verdict(control, comps)
    return AbReport(name, test.status, binary, list(stats_by_arm.values()), comps, winner, verdict)


def _verdict(control: str, comps: list[Comparison]) -> tuple[str | None, str]:
    better = [c for c in comps if c.significant and c.difference > 0]
    if better:
        best = max(better, key=lambda c: c.difference)
        note = (f"; underpowered ({min(best.n_control, best.n_arm)} of ~{best.n_needed_per_arm} ratings per arm "
                "for 80 % power): keep it running before promoting") if best.underpowered else ""
        return best.arm, (f"{best.arm} is better than {control} by {best.difference:+.3f} "
                          f"(p = {best.p_value:.2g} < {ALPHA}){note}")
    if comps and all(c.significant and c.difference < 0 for c in comps):
        return control, f"{control} is better than every other arm (all p < {ALPHA})"
    need = [c.n_needed_per_arm for c in comps if c.n_needed_per_arm]
    more = f"; the observed difference needs about {max(need)} ratings per arm" if need else ""
    return None, f"no significant difference yet{more}"


def plot(rep: AbReport, path: Path) -> Path:
    """A PNG: feedback mean with 95 % intervals, and latency p50 / p99, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [a.arm for a in rep.arms]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    means = [a.feedback_mean or 0.0 for a in rep.arms]
    err = [[m - (a.feedback_ci95 or (m, m))[0] for m, a in zip(means, rep.arms, strict=True)],
           [(a.feedback_ci95 or (m, m))[1] - m for m, a in zip(means, rep.arms, strict=True)]]
    ax1.bar(names, means, yerr=err, capsize=6, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][:len(names)])
    ax1.set_title("feedback mean (95 % CI)")
    for i, a in enumerate(rep.arms):
        ax1.text(i, 0, f"n={a.feedback_n}", ha="center", va="bottom", fontsize=8)
    x = range(len(names))
    ax2.bar([i - 0.2 for i in x], [a.latency_p50_ms or 0 for a in rep.arms], width=0.4, label="p50")
    ax2.bar([i + 0.2 for i in x], [a.latency_p99_ms or 0 for a in rep.arms], width=0.4, label="p99")
    ax2.set_xticks(list(x), names)
    ax2.set_title("latency (ms)")
    ax2.legend()
    fig.suptitle(f"A/B test {rep.name}: {rep.verdict}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
