"""Per-request accounting: rate limits, budget reservations, usage rows and metrics, settled exactly once.

`Accounting.open()` admits a request (per-key rate windows, then a budget reservation of its worst
case, prompt + max_tokens, in the registry) and returns a `Charge`; `settle()` runs on every exit path
(success, error, timeout, client disconnect, cancellation) and records the tokens actually used, in
one transaction that also releases the reservation. So N concurrent requests can never overspend a
budget together, and a request that ends early is still charged for what it consumed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from llmpress.errors import RateLimitError
from llmpress.registry.keys import KeyInfo, KeyStore
from llmpress.server.limits import RateLimiter
from llmpress.server.metrics import Metrics

log = logging.getLogger("llmpress.server")


@dataclass
class Charge:
    """One request's open account."""

    key: KeyInfo | None
    request_id: str
    endpoint: str
    t0: float = field(default_factory=time.perf_counter)
    window: list[float] | None = None  # the limiter's entry
    reservation: str | None = None
    settled: bool = False


class Accounting:
    def __init__(self, keys: KeyStore | None, metrics: Metrics, model_name: str,
                 reservation_ttl_s: float = 3600.0) -> None:
        self.keys = keys
        self.metrics = metrics
        self.model_name = model_name
        self.limiter = RateLimiter()
        self.ttl = reservation_ttl_s

    def open(self, key: KeyInfo | None, request_id: str, endpoint: str, est_tokens: int) -> Charge:
        """Admit a request that may use up to `est_tokens`; RateLimitError (429) when a limit says no."""
        charge = Charge(key, request_id, endpoint)
        if key is None or self.keys is None:
            return charge
        charge.window = self.limiter.admit(key, est_tokens)
        if key.token_budget is not None:
            charge.reservation = self.keys.reserve(key.id, est_tokens, self.ttl)
            if charge.reservation is None:
                self.limiter.settle(charge.window, 0)
                charge.settled = True
                fresh = next((k for k in self.keys.list() if k["id"] == key.id), None)
                used = fresh["tokens_used"] if fresh else key.tokens_used
                err = RateLimitError(f"API key {key.id} has used {used} of its {key.token_budget}-token budget "
                                     f"(plus requests in flight); this request may need {est_tokens}",
                                     "ask for a larger budget or a new key, or lower max_tokens", retry_after=3600)
                err.code = "insufficient_quota"  # type: ignore[attr-defined]
                raise err
        return charge

    def settle(self, charge: Charge, tokens_in: int, tokens_out: int, status: int,
               ttfts: list[float] | None = None, tpots: list[float] | None = None) -> None:
        """Record what the request used; idempotent, and never raises (a failed write is logged)."""
        if charge.settled:
            return
        charge.settled = True
        m = self.metrics
        m.tokens_in.inc(tokens_in)
        m.tokens_out.inc(tokens_out)
        m.latency.observe(time.perf_counter() - charge.t0)
        for t in ttfts or []:
            m.ttft.observe(t)
        for t in tpots or []:
            m.tpot.observe(t)
        if charge.window is not None:
            self.limiter.settle(charge.window, tokens_in + tokens_out)
        if self.keys is None:
            return
        try:
            self.keys.record_usage(charge.key.id if charge.key else None, charge.request_id, self.model_name,
                                   charge.endpoint, tokens_in, tokens_out, (time.perf_counter() - charge.t0) * 1000,
                                   status, reservation=charge.reservation)
        except Exception:  # the registry is down: the response must still go out; the log keeps the record
            log.exception("could not record usage", extra={"request_id": charge.request_id,
                                                           "tokens_in": tokens_in, "tokens_out": tokens_out})
