"""Per-key rate limits (requests/min, tokens/min) over a sliding 60 s window.

In memory, per server process: exact and cheap for one replica; several replicas behind a load
balancer would share the window in Redis or the database instead. Token budgets are not checked
here but in the registry (`KeyStore.reserve`), where requests in flight and other servers count.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from llmpress.errors import RateLimitError
from llmpress.registry.keys import KeyInfo

WINDOW = 60.0


class RateLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, deque[list[float]]] = {}  # key -> [[time, tokens], ...]

    def admit(self, key: KeyInfo, est_tokens: int) -> list[float]:
        """Charge one request and `est_tokens`; raise RateLimitError (with Retry-After) when over a limit."""
        now = time.monotonic()
        with self._lock:
            ev = self._events.setdefault(key.id, deque())
            while ev and ev[0][0] <= now - WINDOW:
                ev.popleft()
            if key.requests_per_minute is not None and len(ev) >= key.requests_per_minute:
                wait = ev[0][0] + WINDOW - now
                raise RateLimitError(f"rate limit of {key.requests_per_minute} requests/min reached for key {key.id}",
                                     f"retry after {wait:.0f} s", retry_after=wait)
            used = sum(e[1] for e in ev)
            if key.tokens_per_minute is not None and ev and used + est_tokens > key.tokens_per_minute:
                wait = ev[0][0] + WINDOW - now
                raise RateLimitError(f"rate limit of {key.tokens_per_minute} tokens/min reached for key {key.id}",
                                     f"retry after {wait:.0f} s or lower max_tokens", retry_after=wait)
            entry = [now, float(est_tokens)]
            ev.append(entry)
            return entry

    def settle(self, entry: list[float], actual_tokens: int) -> None:
        """Replace the admission estimate with the tokens actually used."""
        with self._lock:
            entry[1] = float(actual_tokens)
