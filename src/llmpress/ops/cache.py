"""An exact-match response cache for deterministic requests (temperature 0).

A hit needs the same artifact (its id, so moving an alias never serves the old model's answers),
the same endpoint and the same request body up to fields that cannot change the output (stream,
user, timeouts). Entries are scoped to the API key unless `share_across_keys` is set, so one
client never sees another's prompts. Bounded in entries and bytes (least recently used goes
first), with a TTL; hit / miss / eviction counters, and Prometheus series via `register_metrics`.
Written by hand because it is a few dozen lines over an OrderedDict; a library would add a
dependency without removing any of the scoping and cacheability rules that are the point.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmpress.errors import ConfigError

# request fields that never change the generated output
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "timeout", "model"})


@dataclass
class CacheConfig:
    """Bounds and scope of the response cache (`serve --response-cache`)."""

    max_entries: int = 1024
    max_bytes: int = 64 * 2**20
    ttl_s: float = 600.0
    share_across_keys: bool = False  # True: identical requests from different API keys share entries

    def __post_init__(self) -> None:
        for name in ("max_entries", "max_bytes", "ttl_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"response cache {name} must be > 0, got {getattr(self, name)}",
                                  "leave the cache off instead of giving it no room", param=name)


def cacheable(request: dict[str, Any]) -> bool:
    """Only deterministic requests: temperature exactly 0 and one choice (n > 1 at temperature 0 would repeat)."""
    temp = request.get("temperature")
    return temp is not None and float(temp) == 0.0 and int(request.get("n") or 1) == 1


class ResponseCache:
    """Thread-safe LRU of serialized responses; one per server process."""

    def __init__(self, config: CacheConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or CacheConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key -> (expires at, body)
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.expirations = 0

    def key(self, artifact_id: str, endpoint: str, request: dict[str, Any], api_key: str | None) -> str | None:
        """The cache key of a request, or None when it is not cacheable (then do not call get/put)."""
        if not cacheable(request):
            return None
        body = {k: v for k, v in request.items() if k not in IGNORED_FIELDS and v is not None}
        scope = "*" if self.config.share_across_keys else (api_key or "-")
        blob = json.dumps([artifact_id, endpoint, scope, body], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> bytes | None:
        now = self._clock()
        with self._lock:
            item = self._data.get(key)
            if item is not None and item[0] <= now:
                self._drop(key)
                self.expirations += 1
                item = None
            if item is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: str, body: bytes) -> bool:
        """Store a response; False when it alone exceeds the byte bound (it is not cached)."""
        if len(body) > self.config.max_bytes:
            return False
        with self._lock:
            if key in self._data:
                self._drop(key)
            self._data[key] = (self._clock() + self.config.ttl_s, body)
            self.bytes += len(body)
            while len(self._data) > self.config.max_entries or self.bytes > self.config.max_bytes:
                oldest = next(iter(self._data))
                self._drop(oldest)
                self.evictions += 1
        return True

    def _drop(self, key: str) -> None:
        _, body = self._data.pop(key)
        self.bytes -= len(body)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            total = self.hits + self.misses
            return {"entries": len(self._data), "bytes": self.bytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions, "expirations": self.expirations,
                    "hit_rate": self.hits / total if total else 0.0}

    def register_metrics(self, registry: Any) -> None:
        """Expose the counters on a prometheus_client CollectorRegistry (the server's own)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cache = self

        class _Collector:
            def collect(self) -> Any:
                s = cache.stats()
                for name, doc in (("hits", "Responses served from the response cache"),
                                  ("misses", "Cacheable requests not found in the response cache"),
                                  ("evictions", "Entries evicted by the entry or byte bound")):
                    yield CounterMetricFamily(f"llmpress_response_cache_{name}", doc, value=s[name])
                yield GaugeMetricFamily("llmpress_response_cache_entries", "Entries in the response cache",
                                        value=s["entries"])
                yield GaugeMetricFamily("llmpress_response_cache_bytes", "Bytes of responses in the cache",
                                        value=s["bytes"])

        registry.register(_Collector())
