"""`plan --requirements`: from privacy, latency, traffic, budget, hardware and a quality floor to a
ranked list of (model, compression recipe, deployment form, replicas) with expected cost, latency
and quality, every figure marked measured (artifact / evaluation id) or assumed.

Options come from registry artifacts that carry speed measurements (`llmpress eval`) and from the
API targets of a gateway config (`targets: [{name, url, models, local, price: {input_per_mtok,
output_per_mtok}, context, timeout_s}]`, read as plain YAML). Forms: local server on the user's
hardware, self-hosted on rented cloud cores, cloud API, hybrid (local base load + API overflow),
edge export (on the users' devices). The capacity model is deliberately simple and stated:
one replica uses the cores it was measured with; it serves requests at the measured batched decode
rate plus the measured prefill rate, at an assumed utilisation; replicas cover the peak rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmpress.errors import ConfigError, DataError, NotFoundError

__all__ = ["Requirements", "Figure", "Option", "Recommendation", "load_requirements", "recommend",
           "load_gateway_targets"]

DAYS_PER_MONTH = 30.4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Privacy(_Strict):
    data_may_leave: bool = Field(True, description="may prompts and outputs leave your premises?")


class Latency(_Strict):
    p95_ttft_ms: float | None = Field(None, gt=0)
    min_tok_s: float | None = Field(None, ge=0, description="decode tokens/s per request")


class Traffic(_Strict):
    requests_per_day: float = Field(..., gt=0)
    tokens_in: int = Field(500, ge=1)
    tokens_out: int = Field(200, ge=1)
    pattern: Literal["steady", "spiky"] = "steady"
    peak_to_mean: float | None = Field(None, ge=1, description="default 2 (steady) or 10 (spiky)")

    def peak_factor(self) -> float:
        return self.peak_to_mean if self.peak_to_mean is not None else (2.0 if self.pattern == "steady" else 10.0)


class Budget(_Strict):
    usd_per_month: float | None = Field(None, ge=0)


class Hardware(_Strict):
    cores: int = Field(0, ge=0, description="CPU cores you own for serving (0: none)")
    ram_gb: float = Field(0, ge=0)
    gpu: str | None = None
    usd_per_month: float = Field(0, ge=0, description="what running your hardware costs (power, amortisation)")


class Edge(_Strict):
    devices: int = Field(..., ge=1)
    ram_mb: float = Field(..., gt=0)


class Quality(_Strict):
    task: str | None = None
    min_score: float | None = Field(None, ge=0, le=1)
    max_perplexity: float | None = Field(None, gt=0)


class Assumptions(_Strict):
    cloud_usd_per_vcpu_hour: float = Field(0.04, ge=0)
    cloud_usd_per_gb_hour: float = Field(0.005, ge=0)
    hours_per_month: float = Field(730, gt=0)
    utilisation: float = Field(0.6, gt=0, le=1, description="busy share a replica is run at")
    p95_over_median: float = Field(1.5, ge=1, description="p95 / median TTFT under load")
    api_ttft_ms: float = Field(600, gt=0)
    api_tok_s: float = Field(60, gt=0)


class Requirements(_Strict):
    name: str = "requirements"
    privacy: Privacy = Field(default_factory=Privacy)
    latency: Latency = Field(default_factory=Latency)
    traffic: Traffic
    budget: Budget = Field(default_factory=Budget)
    hardware: Hardware = Field(default_factory=Hardware)
    quality: Quality = Field(default_factory=Quality)
    edge: Edge | None = None
    gateway: str | None = Field(None, description="gateway config YAML with API targets (relative to this file)")
    models: list[str] | None = Field(None, description="registry artifacts to consider (default: all measured)")
    assumptions: Assumptions = Field(default_factory=Assumptions)

    def conflicts(self) -> list[tuple[str, str]]:
        """Requirements that cannot all hold, as (conflict, what to relax)."""
        out = []
        if not self.privacy.data_may_leave and self.hardware.cores == 0 and self.edge is None:
            out.append(("privacy.data_may_leave is false but hardware.cores is 0 and no edge devices are given: "
                        "no data may leave and there is nothing local to run a model on",
                        "allow data to leave (privacy.data_may_leave: true), or give local hardware "
                        "(hardware.cores / ram_gb) or edge devices"))
        if self.hardware.cores > 0 and self.hardware.ram_gb == 0:
            out.append(("hardware.cores is set but hardware.ram_gb is 0", "give the RAM of that hardware"))
        if (self.budget.usd_per_month == 0 and self.hardware.cores == 0 and self.edge is None):
            out.append(("budget.usd_per_month is 0 and there is no local hardware or edge device: every form costs "
                        "money", "raise the budget or give hardware"))
        if self.quality.min_score is not None and not self.quality.task:
            out.append(("quality.min_score is set without quality.task", "name the task the score is measured on"))
        return out


@dataclass
class Figure:
    """A number with its provenance: measured (artifact / evaluation id), derived (from measured figures
    and stated assumptions) or assumed."""

    value: float | None
    kind: str  # measured | derived | assumed | unknown
    source: str = ""

    def text(self, digits: int = 1) -> str:
        if self.value is None:
            return "?"
        mark = {"measured": "m", "derived": "d", "assumed": "a"}.get(self.kind, "?")
        v = f"{self.value:,.{digits}f}" if abs(self.value) < 1e6 else f"{self.value:,.0f}"
        return f"{v} ({mark})"


@dataclass
class Option:
    model: str
    artifact_id: str | None
    recipe: str
    form: str  # local server | self-hosted cloud | cloud API | hybrid | edge export
    replicas: int
    figures: dict[str, Figure] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def figure(self, key: str) -> str:
        f = self.figures.get(key)
        return f.text(3 if key == "quality" else 1) if f else "—"

    def measured_count(self) -> int:
        return sum(1 for f in self.figures.values() if f.kind == "measured")

    def sources_line(self) -> str:
        refs = sorted({f.source for f in self.figures.values() if f.kind == "measured" and f.source})
        return ", ".join(refs) if refs else "assumed only"

    def headline(self) -> str:
        cost = self.figures.get("cost_usd_month")
        return (f"{self.form} with {self.model} ({self.recipe}), {self.replicas} replica(s), "
                f"~${cost.value:,.0f}/month" if cost and cost.value is not None else f"{self.form} with {self.model}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "artifact_id": self.artifact_id, "recipe": self.recipe, "form": self.form,
                "replicas": self.replicas,
                "figures": {k: {"value": f.value, "kind": f.kind, "source": f.source} for k, f in self.figures.items()},
                "rejected": self.rejected, "notes": self.notes}


@dataclass
class Recommendation:
    requirements: Requirements
    options: list[Option]
    rejected: list[Option]
    summary: str
    break_even: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"requirements": self.requirements.model_dump(), "summary": self.summary,
                "break_even": self.break_even, "options": [o.to_dict() for o in self.options],
                "rejected": [o.to_dict() for o in self.rejected]}


def _read_yaml(path: Path, what: str) -> Any:
    if not path.is_file():
        raise NotFoundError(f"{what} file {path} does not exist", "check the path")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{what} file {path} is not valid YAML ({str(e).splitlines()[0]})", "fix the YAML") from e


def load_requirements(path: str | Path) -> Requirements:
    """Parse and validate a requirements YAML; the first problem is one clear error naming the field."""
    path = Path(path)
    raw = _read_yaml(path, "requirements")
    if not isinstance(raw, dict):
        raise ConfigError(f"requirements file {path} is empty or not a mapping", "see examples/requirements-*.yaml")
    try:
        req = Requirements.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(f"requirements {path}: {loc}: {err['msg']}",
                          "fix that field (see examples/requirements-*.yaml)") from e
    for conflict, fix in req.conflicts():
        raise ConfigError(f"contradictory requirements in {path}: {conflict}", fix)
    if req.gateway and not Path(req.gateway).is_absolute():
        req.gateway = str((path.parent / req.gateway).resolve())
    return req


@dataclass
class ApiTarget:
    name: str
    url: str
    models: list[str]
    local: bool
    price_in: float  # $ per million input tokens
    price_out: float
    context: int | None
    source: str


def load_gateway_targets(path: str | Path) -> list[ApiTarget]:
    """The `targets:` of a gateway config, read as plain YAML (only the keys the plan needs)."""
    path = Path(path)
    raw = _read_yaml(path, "gateway config")
    targets = raw.get("targets") if isinstance(raw, dict) else None
    if not isinstance(targets, list) or not targets:
        raise ConfigError(f"gateway config {path} has no `targets:` list", "add targets: [{name, url, price, ...}]")
    out = []
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or not t.get("name"):
            raise ConfigError(f"gateway config {path}: targets[{i}] has no name", "give every target a name")
        price = t.get("price") or {}
        try:
            out.append(ApiTarget(str(t["name"]), str(t.get("url", "")), [str(m) for m in t.get("models") or []],
                                 bool(t.get("local", False)), float(price.get("input_per_mtok", 0.0)),
                                 float(price.get("output_per_mtok", 0.0)),
                                 int(t["context"]) if t.get("context") else None, f"{path.name}:{t['name']}"))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"gateway config {path}: targets[{i}] ({t.get('name')}) has a bad price or context",
                              "prices are numbers per million tokens, context an integer") from e
    return out


# -- measured models ---------------------------------------------------------------------------------
@dataclass
class Measured:
    artifact_id: str
    name: str
    recipe: str
    threads: int
    b1_tok_s: Figure
    batch: int
    batch_tok_s: Figure
    prefill_tok_s: Figure
    ttft_ms: Figure  # at the measured prompt length
    ttft_prompt_tokens: int
    peak_rss_mb: Figure
    quality: Figure


def _latest_eval_id(evals: list[Any], kind: str, dataset: str | None = None) -> str:
    rows = [e for e in evals if e.kind == kind and (dataset is None or e.dataset == dataset)]
    return f"eval #{rows[-1].id}" if rows else "manifest"


def _recipe_of(art_id: str) -> str:
    from llmpress.registry import get_registry

    steps = []
    for m in reversed(get_registry().lineage(art_id)):
        if m.step.name in ("source", "builtin", "hub", "gguf"):
            continue
        p = m.step.params
        detail = p.get("scheme") or p.get("method") or ""
        if m.step.name == "prune" and p.get("method") == "structured":
            detail = f"structured h{p.get('heads') or 0:.0%} m{p.get('mlp') or 0:.0%}"
        if m.step.name == "distill" and p.get("student_layers"):
            detail = f"{p['student_layers']} layers"
        steps.append(f"{m.step.name} {detail}".strip())
    return " + ".join(steps) or "none (base model)"


def measured_models(req: Requirements) -> list[Measured]:
    """Registry artifacts with a speed measurement, and what each was measured to do."""
    from llmpress.registry import get_registry

    reg = get_registry()
    rows = reg.list()
    if req.models:
        wanted = set(req.models)
        rows = [r for r in rows if r.id in wanted or r.name in wanted or any(r.id.startswith(w) for w in wanted)]
    out = []
    for r in rows:
        s = (r.metrics or {}).get("speed") or {}
        dec = s.get("decode") or {}
        b1 = (dec.get("b1") or {}).get("tok_s", {}).get("median")
        ttft = (s.get("ttft_s") or {}).get("median")
        if not b1 or not ttft:
            continue
        evals = reg.evaluations(r.id)
        sref = f"{r.id[:8]} {_latest_eval_id(evals, 'speed')}"
        batches = sorted((int(k[1:]), v.get("tok_s", {}).get("median")) for k, v in dec.items()
                         if k[1:].isdigit() and v.get("tok_s", {}).get("median"))
        bn, bn_tok = max(batches, key=lambda x: x[1])
        ptoks = int(s.get("ttft_prompt_tokens") or 128)
        quality = Figure(None, "unknown", f"not measured: llmpress eval {r.id[:8]} --task {req.quality.task}"
                         if req.quality.task else "")
        task = (r.metrics or {}).get("task") or {}
        q = (r.metrics or {}).get("quality") or {}
        if req.quality.task and task.get("task") == req.quality.task and task.get("score") is not None:
            quality = Figure(float(task["score"]), "measured",
                             f"{r.id[:8]} {_latest_eval_id(evals, 'task', req.quality.task)}")
        elif req.quality.max_perplexity is not None and q.get("perplexity"):
            quality = Figure(float(q["perplexity"]), "measured", f"{r.id[:8]} {_latest_eval_id(evals, 'quality')}")
        out.append(Measured(r.id, r.name, _recipe_of(r.id), int(s.get("threads") or 1),
                            Figure(float(b1), "measured", sref), bn, Figure(float(bn_tok), "measured", sref),
                            Figure(ptoks / float(ttft), "measured", sref), Figure(float(ttft) * 1000, "measured", sref),
                            ptoks, Figure(float(s.get("peak_rss_mb") or 0), "measured", sref), quality))
    return out


# -- options -------------------------------------------------------------------------------------------
def _traffic(req: Requirements) -> tuple[float, float, float]:
    """(mean requests/s, peak requests/s, million tokens per month in + out)."""
    t = req.traffic
    mean = t.requests_per_day / 86400.0
    return mean, mean * t.peak_factor(), t.requests_per_day * DAYS_PER_MONTH


def _serve_figures(m: Measured, req: Requirements) -> tuple[float, Figure, Figure, Figure]:
    """(requests/s one replica serves, p95 TTFT, per-request tok/s, quality) from the measurements."""
    a, t = req.assumptions, req.traffic
    busy_s = t.tokens_in / m.prefill_tok_s.value + t.tokens_out / m.batch_tok_s.value  # type: ignore[operator]
    cap = a.utilisation / busy_s
    ttft = m.ttft_ms.value * (t.tokens_in / m.ttft_prompt_tokens) * a.p95_over_median  # type: ignore[operator]
    src = m.ttft_ms.source
    return (cap, Figure(ttft, "derived", f"{src} x {t.tokens_in}/{m.ttft_prompt_tokens} tokens x p95 factor "
                        f"{a.p95_over_median:g} (assumed)"), Figure(m.b1_tok_s.value, "measured", m.b1_tok_s.source),
            m.quality)


def _check(o: Option, req: Requirements) -> None:
    lat, q = req.latency, req.quality
    f = o.figures
    if lat.p95_ttft_ms is not None and f["p95_ttft_ms"].value is not None and f["p95_ttft_ms"].value > lat.p95_ttft_ms:
        o.rejected.append(f"p95 TTFT {f['p95_ttft_ms'].value:,.0f} ms > {lat.p95_ttft_ms:g} ms")
    if lat.min_tok_s is not None and f["tok_s"].value is not None and f["tok_s"].value < lat.min_tok_s:
        o.rejected.append(f"{f['tok_s'].value:.1f} tok/s < {lat.min_tok_s:g} tok/s")
    cost = f["cost_usd_month"].value
    if req.budget.usd_per_month is not None and cost is not None and cost > req.budget.usd_per_month:
        o.rejected.append(f"${cost:,.0f}/month > budget ${req.budget.usd_per_month:,.0f}")
    qf = f.get("quality")
    if qf is not None and qf.value is not None and qf.kind == "measured":
        if q.min_score is not None and q.task and qf.value < q.min_score:
            o.rejected.append(f"{q.task} score {qf.value:.3f} < floor {q.min_score:g}")
        if q.max_perplexity is not None and not q.task and qf.value > q.max_perplexity:
            o.rejected.append(f"perplexity {qf.value:.2f} > {q.max_perplexity:g}")
    elif (q.min_score is not None or q.max_perplexity is not None) and qf is not None:
        o.notes.append(f"quality not measured against the floor ({qf.source or 'no measurement'})")


def _self_hosted(m: Measured, req: Requirements) -> list[Option]:
    a, hw = req.assumptions, req.hardware
    mean, peak, _ = _traffic(req)
    cap, p95, toks, qual = _serve_figures(m, req)
    replicas = max(1, math.ceil(peak / cap))
    ram_gb = m.peak_rss_mb.value / 1024  # type: ignore[operator]
    opts = []
    # Local server on the user's own hardware.
    o = Option(m.name, m.artifact_id, m.recipe, "local server", replicas)
    o.figures = {"cost_usd_month": Figure(hw.usd_per_month, "assumed",
                                          "hardware.usd_per_month (0: hardware already owned)"),
                 "p95_ttft_ms": p95, "tok_s": toks, "quality": qual,
                 "capacity_rps": Figure(cap * replicas, "derived", f"{m.batch_tok_s.source} b{m.batch} + prefill, "
                                        f"utilisation {a.utilisation:g} (assumed)")}
    if hw.cores == 0:
        o.rejected.append("no local hardware (hardware.cores is 0)")
    else:
        need_c, need_r = replicas * m.threads, replicas * ram_gb
        if need_c > hw.cores or need_r > hw.ram_gb:
            o.rejected.append(f"needs {replicas} replica(s) x {m.threads} cores / {ram_gb:.2f} GB = {need_c} cores, "
                              f"{need_r:.1f} GB > local {hw.cores} cores, {hw.ram_gb:g} GB")
    o.notes.append(f"{replicas} replica(s) of {m.threads} core(s) cover the peak {peak:.2f} req/s "
                   f"({cap:.2f} req/s each)")
    if hw.gpu:
        o.notes.append(f"hardware.gpu {hw.gpu!r} is not modelled: these figures are CPU measurements")
    opts.append(o)
    # Self-hosted on rented cloud cores.
    per = (m.threads * a.cloud_usd_per_vcpu_hour + max(ram_gb, 0.5) * a.cloud_usd_per_gb_hour) * a.hours_per_month
    o = Option(m.name, m.artifact_id, m.recipe, "self-hosted cloud", replicas)
    o.figures = {"cost_usd_month": Figure(per * replicas, "derived",
                                          f"{replicas} x ({m.threads} vCPU x ${a.cloud_usd_per_vcpu_hour:g}/h + "
                                          f"{max(ram_gb, 0.5):.2f} GB x ${a.cloud_usd_per_gb_hour:g}/h) x "
                                          f"{a.hours_per_month:g} h (assumed prices)"),
                 "p95_ttft_ms": p95, "tok_s": toks, "quality": qual,
                 "capacity_rps": Figure(cap * replicas, "derived", "as local")}
    o.notes.append(f"always-on for the peak ({req.traffic.peak_factor():g}x the mean); one replica "
                   f"${per:,.0f}/month")
    if not req.privacy.data_may_leave:
        o.rejected.append("privacy: data may not leave, and rented cloud machines are off your premises")
    opts.append(o)
    # Edge export onto the users' devices.
    if req.edge is not None:
        o = Option(m.name, m.artifact_id, m.recipe + " + export", "edge export", req.edge.devices)
        o.figures = {"cost_usd_month": Figure(0.0, "assumed", "runs on the users' devices"),
                     "p95_ttft_ms": Figure(m.ttft_ms.value * req.traffic.tokens_in / m.ttft_prompt_tokens,  # type: ignore[operator]
                                           "assumed", f"{m.ttft_ms.source}, device assumed as fast as this machine"),
                     "tok_s": Figure(m.b1_tok_s.value, "assumed", "device assumed as fast as this machine"),
                     "quality": qual}
        if (m.peak_rss_mb.value or 0) > req.edge.ram_mb:
            o.rejected.append(f"peak RSS {m.peak_rss_mb.value:.0f} MB > device RAM {req.edge.ram_mb:g} MB")
        opts.append(o)
    return opts


def _api_options(targets: list[ApiTarget], req: Requirements) -> list[Option]:
    a, t = req.assumptions, req.traffic
    _, _, reqs_month = _traffic(req)
    opts = []
    for tg in targets:
        per_request = (t.tokens_in * tg.price_in + t.tokens_out * tg.price_out) / 1e6
        form = "local server" if tg.local else "cloud API"
        o = Option(f"{tg.name}" + (f" ({', '.join(tg.models[:2])})" if tg.models else ""), None,
                   "provider's", form, 1)
        o.figures = {"cost_usd_month": Figure(per_request * reqs_month, "derived",
                                              f"{tg.source} prices x {reqs_month:,.0f} requests/month"),
                     "p95_ttft_ms": Figure(a.api_ttft_ms, "assumed", "assumptions.api_ttft_ms"),
                     "tok_s": Figure(a.api_tok_s, "assumed", "assumptions.api_tok_s"),
                     "quality": Figure(None, "unknown", f"not measured: score {tg.name} on {req.quality.task} "
                                       "through the gateway" if req.quality.task else "")}
        o.notes.append(f"${per_request * 1000:.3f} per 1000 requests; pay per use, no idle cost")
        if not tg.local and not req.privacy.data_may_leave:
            o.rejected.append("privacy: data may not leave, and this is a third-party API")
        if tg.context is not None and t.tokens_in + t.tokens_out > tg.context:
            o.rejected.append(f"context {tg.context} < {t.tokens_in + t.tokens_out} tokens per request")
        opts.append(o)
    return opts


def _hybrid(local: Option, api: Option, m: Measured, req: Requirements) -> Option:
    """Local replicas sized to the local hardware for the base load; the API takes what exceeds them."""
    hw = req.hardware
    mean, peak, reqs_month = _traffic(req)
    cap_one, p95, toks, qual = _serve_figures(m, req)
    ram_gb = (m.peak_rss_mb.value or 0) / 1024
    fit = min(hw.cores // max(1, m.threads), int(hw.ram_gb // max(ram_gb, 1e-6)))
    cap = cap_one * fit
    overflow = max(0.0, 1.0 - cap / peak) if peak > 0 else 0.0
    api_cost = (api.figures["cost_usd_month"].value or 0.0) * overflow
    o = Option(f"{m.name} + {api.model}", m.artifact_id, m.recipe, "hybrid", fit)
    o.figures = {"cost_usd_month": Figure(hw.usd_per_month + api_cost, "derived",
                                          f"hardware + API for an overflow share {overflow:.0%} = max(0, 1 - local "
                                          "capacity / peak rate) (assumed: every request at the peak rate)"),
                 "p95_ttft_ms": Figure(max(p95.value or 0, api.figures["p95_ttft_ms"].value or 0), "derived",
                                       "worse of local and API"),
                 "tok_s": Figure(min(toks.value or 0, api.figures["tok_s"].value or 0), "derived",
                                 "worse of local and API"),
                 "quality": qual}
    if fit < 1:
        o.rejected.append("local hardware cannot hold one replica")
    if not req.privacy.data_may_leave:
        o.rejected.append("privacy: the overflow would leave your premises")
    o.notes.append(f"{fit} local replica(s) take {cap:.2f} req/s; the API takes peaks above that")
    return o


def _break_even(opts: list[Option], req: Requirements) -> str | None:
    """Requests/day at which the cheapest self-hosted form costs the same as the cheapest API."""
    def best(form: str) -> Option | None:
        c = [o for o in opts if o.form == form and o.figures["cost_usd_month"].value is not None]
        return min(c, key=lambda o: o.figures["cost_usd_month"].value) if c else None  # type: ignore[arg-type,return-value]

    sh, api = best("self-hosted cloud"), best("cloud API")
    if sh is None or api is None:
        return None
    _, _, reqs_month = _traffic(req)
    api_cost = api.figures["cost_usd_month"].value or 0.0
    per_req_api = api_cost / reqs_month if reqs_month else 0.0
    one = (sh.figures["cost_usd_month"].value or 0.0) / sh.replicas
    cap_rps = (sh.figures["capacity_rps"].value or 0.0) / sh.replicas
    if per_req_api <= 0:
        return f"the API `{api.model}` costs nothing per request here: self-hosting never pays off"
    be = one / (per_req_api * DAYS_PER_MONTH)
    per_replica_day = cap_rps / req.traffic.peak_factor() * 86400  # requests/day one replica takes at this shape
    per_req_sh = one / (per_replica_day * DAYS_PER_MONTH) if per_replica_day else math.inf
    head = (f"self-hosted `{sh.model}` (${one:,.0f}/month per replica, {sh.replicas} replica(s) = "
            f"${sh.figures['cost_usd_month'].value:,.0f}) vs API `{api.model}` (${per_req_api * 1000:.3f} per 1000 "
            f"requests = ${api_cost:,.0f}/month at {req.traffic.requests_per_day:,.0f}/day)")
    if per_req_sh < per_req_api:
        return (f"{head}: self-hosting pays off above ~{be:,.0f} requests/day (one replica takes up to "
                f"{per_replica_day:,.0f}/day at peak {req.traffic.peak_factor():g}x; when full it costs "
                f"${per_req_sh * 1000:.3f} per 1000 requests)")
    return (f"{head}: self-hosting never pays off at this traffic shape: a full replica costs "
            f"${per_req_sh * 1000:.3f} per 1000 requests (it takes at most {per_replica_day:,.0f}/day at peak "
            f"{req.traffic.peak_factor():g}x), more than the API")


def recommend(requirements: str | Path | Requirements, gateway_path: str | Path | None = None) -> Recommendation:
    """Rank every (model, form) option against the requirements; violating options carry their reasons."""
    req = requirements if isinstance(requirements, Requirements) else load_requirements(requirements)
    gw = gateway_path or req.gateway
    targets = load_gateway_targets(gw) if gw else []
    measured = measured_models(req)
    if not measured and not targets:
        raise NotFoundError("no measured models in the registry and no gateway targets to compare",
                            "measure a model first (llmpress eval MODEL"
                            + (f" --task {req.quality.task}" if req.quality.task else "") + ") or pass --gateway")
    opts: list[Option] = []
    for m in measured:
        opts += _self_hosted(m, req)
    api_opts = _api_options(targets, req)
    opts += api_opts
    cloud = [o for o in api_opts if o.form == "cloud API"]
    if req.hardware.cores > 0 and cloud:
        cheapest_api = min(cloud, key=lambda o: o.figures["cost_usd_month"].value or 0.0)
        for m in measured:
            local = next(o for o in opts if o.artifact_id == m.artifact_id and o.form == "local server")
            opts.append(_hybrid(local, cheapest_api, m, req))
    for o in opts:
        _check(o, req)
    ok = [o for o in opts if not o.rejected]
    bad = [o for o in opts if o.rejected]

    floor = req.quality.min_score is not None or req.quality.max_perplexity is not None

    def rank(o: Option) -> tuple[int, float, float, int, float]:
        """Verified quality first (when there is a floor), then cost, p95 TTFT, measured figures, quality."""
        q = o.figures.get("quality")
        verified = q is not None and q.value is not None and q.kind == "measured"
        qv = q.value if verified and q is not None and q.value is not None else 0.0
        return (int(floor and not verified), o.figures["cost_usd_month"].value or 0.0,
                o.figures["p95_ttft_ms"].value or 0.0, -o.measured_count(), -qv)

    ok.sort(key=rank)
    be = _break_even(opts, req) if req.privacy.data_may_leave else None
    return Recommendation(req, ok, bad, _summary(req, ok, bad), be)


def _summary(req: Requirements, ok: list[Option], bad: list[Option]) -> str:
    if not ok:
        reasons = sorted({r.split(":")[0] if r.startswith("privacy") else r for o in bad for r in o.rejected})[:4]
        return ("no option meets every requirement; relax one of: " + "; ".join(reasons)) if reasons else \
            "no options"
    top = ok[0]
    why = [f"{top.form} is the cheapest option that meets every requirement"]
    if not req.privacy.data_may_leave:
        why.append("privacy rules out every cloud form")
    if top.form == "cloud API":
        why.append(f"at {req.traffic.requests_per_day:,.0f} requests/day ({req.traffic.pattern}, peak "
                   f"{req.traffic.peak_factor():g}x) paying per use beats keeping replicas up for the peak")
    if top.form == "self-hosted cloud":
        why.append(f"at {req.traffic.requests_per_day:,.0f} requests/day of {req.traffic.pattern} traffic the "
                   "replicas stay busy, so they cost less than per-token API prices")
    return "; ".join(why) + f" ({len(ok)} valid, {len(bad)} rejected)."
