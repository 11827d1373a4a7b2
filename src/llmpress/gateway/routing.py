"""Routing: a name -> policy table (local-first, cheapest, fastest, weighted), then the filters every
request goes through whatever the policy: privacy (sensitive text -> local targets only), context
length, circuit breakers, and capacity (a saturated local target moves behind the others: spillover).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmpress.errors import LlmpressError
from llmpress.gateway.config import BreakerConfig, RouteConfig, TargetConfig


@dataclass
class Breaker:
    """Per-target circuit breaker: closed -> open after N consecutive failures -> half-open after cooldown
    (one probe request) -> closed on success, open again on failure."""

    config: BreakerConfig
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.config.cooldown_s else "open"

    def allow(self) -> bool:
        st = self.state
        if st == "closed":
            return True
        if st == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.config.failures or self.opened_at is not None:
            self.opened_at = time.monotonic()


@dataclass
class TargetState:
    """What the gateway knows about one target right now (owned by the event loop: no locks)."""

    config: TargetConfig
    breaker: Breaker
    queue: float = 0.0          # upstream llmpress_queue_depth at the last poll + dispatches since
    running: float = 0.0
    kv_usage: float = 0.0
    inflight: int = 0           # requests this gateway has open at the target
    polled_at: float | None = None
    poll_error: str | None = None
    ewma_ttft_s: float | None = None
    saturated_until: float = 0.0  # set when the target answered 429/503
    served: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    def saturated(self) -> bool:
        c = self.config
        if time.monotonic() < self.saturated_until:
            return True
        if c.max_queue is not None and self.queue > c.max_queue:
            return True
        return c.max_kv_usage is not None and self.kv_usage >= c.max_kv_usage

    def observe_ttft(self, seconds: float) -> None:
        self.ewma_ttft_s = seconds if self.ewma_ttft_s is None else 0.8 * self.ewma_ttft_s + 0.2 * seconds

    def update_from_metrics(self, text: str) -> None:
        """Read queue depth, running batch and KV usage from Prometheus text: llmpress serve's metric names,
        or vLLM's (`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:*cache_usage_perc`)."""
        vals: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(("llmpress_", "vllm:")):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                try:
                    vals[name] = vals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
                except (ValueError, IndexError):
                    continue
        if "vllm:num_requests_waiting" in vals:
            self.queue = vals["vllm:num_requests_waiting"]
            self.running = vals.get("vllm:num_requests_running", 0.0)
            self.kv_usage = vals.get("vllm:kv_cache_usage_perc", vals.get("vllm:gpu_cache_usage_perc", 0.0))
        else:
            self.queue = vals.get("llmpress_queue_depth", 0.0)
            self.running = vals.get("llmpress_running_batch_size", 0.0)
            total = vals.get("llmpress_kv_blocks_total", 0.0)
            self.kv_usage = vals.get("llmpress_kv_blocks_used", 0.0) / total if total else 0.0
        self.polled_at = time.monotonic()
        self.poll_error = None


# -- policies: order a route's targets for one request --------------------------------------------
Policy = Callable[[RouteConfig, list[TargetState]], list[TargetState]]


def local_first(route: RouteConfig, ts: list[TargetState]) -> list[TargetState]:
    """Local targets first (in route order), then the others in route order."""
    return [t for t in ts if t.config.local] + [t for t in ts if not t.config.local]


def cheapest(route: RouteConfig, ts: list[TargetState]) -> list[TargetState]:
    """Lowest input + output price first (ties keep route order)."""
    return sorted(ts, key=lambda t: t.config.price.input_per_mtok + t.config.price.output_per_mtok)


def fastest(route: RouteConfig, ts: list[TargetState]) -> list[TargetState]:
    """Lowest observed TTFT (EWMA) first; targets never measured go first so they get measured."""
    return sorted(ts, key=lambda t: -1.0 if t.ewma_ttft_s is None else t.ewma_ttft_s)


def weighted(route: RouteConfig, ts: list[TargetState]) -> list[TargetState]:
    """A weighted random order (weighted sampling without replacement); weight 0 goes last."""
    w = route.weights or {}
    keyed = [(random.random() ** (1.0 / w[t.name]) if w.get(t.name, 0) > 0 else -1.0, t) for t in ts]
    return [t for _, t in sorted(keyed, key=lambda x: -x[0])]


POLICIES: dict[str, Policy] = {"local-first": local_first, "cheapest": cheapest, "fastest": fastest,
                               "weighted": weighted}


class NoTargetError(LlmpressError):
    """No target may take this request (privacy, context length, all circuits open)."""

    http_status = 503
    error_type = "overloaded_error"


class SensitiveDataError(LlmpressError):
    """Sensitive text and no local target available: refused, never sent out."""

    http_status = 422
    error_type = "invalid_request_error"


@dataclass
class Plan:
    """The ordered targets one request will try, and why others were left out."""

    targets: list[TargetState]
    sensitive: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def plan(route: RouteConfig, states: dict[str, TargetState], sensitive: list[str], need_tokens: int) -> Plan:
    """Order the route's targets by its policy, then apply privacy, context, breaker and capacity rules."""
    ts = POLICIES[route.policy](route, [states[n] for n in route.targets])
    skipped: dict[str, str] = {}
    if sensitive:
        for t in ts:
            if not t.config.local:
                skipped[t.name] = "not local (request has sensitive data)"
        ts = [t for t in ts if t.config.local]
        if not ts:
            raise SensitiveDataError(
                f"the request contains sensitive data ({', '.join(sorted(set(sensitive)))}) and route "
                f"{route.alias!r} has no local target; it was not sent anywhere",
                "remove the sensitive data, or add a `local: true` target to the route", param="messages")
    fits = [t for t in ts if t.config.context >= need_tokens]
    for t in ts:
        if t not in fits:
            skipped[t.name] = f"context {t.config.context} < {need_tokens} tokens needed"
    if not fits:
        raise LlmpressError(f"the request needs about {need_tokens} tokens (prompt + max_tokens); the largest "
                            f"context among route {route.alias!r}'s targets is {max(t.config.context for t in ts)}",
                            "shorten the prompt or lower max_tokens", param="max_tokens")
    open_ = [t for t in fits if t.breaker.state == "open"]
    for t in open_:
        skipped[t.name] = "circuit open"
    ready = [t for t in fits if t not in open_]
    if not ready:
        raise NoTargetError(f"every target of route {route.alias!r} is failing (circuit open): "
                            f"{', '.join(t.name for t in open_)}", "retry in a few seconds")
    # capacity: saturated targets go behind the others (still tried last: better queued than refused)
    ordered = [t for t in ready if not t.saturated()] + [t for t in ready if t.saturated()]
    return Plan(ordered, sensitive, skipped)
