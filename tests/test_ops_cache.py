"""The response cache: only deterministic requests, exact match per artifact and API key, bounded in entries
and bytes (LRU), TTL, counters and Prometheus series."""

from __future__ import annotations

import threading

import pytest

from llmpress.errors import ConfigError
from llmpress.ops.cache import CacheConfig, ResponseCache, cacheable


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


REQ = {"model": "prod", "prompt": "Hello", "max_tokens": 8, "temperature": 0}


def test_only_deterministic_requests_are_cacheable() -> None:
    c = ResponseCache()
    assert cacheable(REQ) and c.key("a1", "completions", REQ, "k1")
    for req in ({**REQ, "temperature": 0.7}, {k: v for k, v in REQ.items() if k != "temperature"}, {**REQ, "n": 2}):
        assert not cacheable(req) and c.key("a1", "completions", req, "k1") is None


def test_exact_match_scoped_by_artifact_endpoint_and_key() -> None:
    c = ResponseCache()
    k = c.key("a1", "completions", REQ, "k1")
    assert c.get(k) is None
    c.put(k, b'{"text": "hi"}')
    assert c.get(c.key("a1", "completions", dict(reversed(list(REQ.items()))), "k1")) == b'{"text": "hi"}'
    # fields that cannot change the output do not matter; everything else does
    assert c.key("a1", "completions", {**REQ, "stream": True, "user": "bob", "model": "alias2"}, "k1") == k
    assert c.key("a1", "completions", {**REQ, "max_tokens": 9}, "k1") != k
    assert c.key("a2", "completions", REQ, "k1") != k  # another artifact (an alias moved)
    assert c.key("a1", "chat", REQ, "k1") != k
    assert c.key("a1", "completions", REQ, "k2") != k  # never across API keys ...
    shared = ResponseCache(CacheConfig(share_across_keys=True))
    assert shared.key("a1", "completions", REQ, "k1") == shared.key("a1", "completions", REQ, "k2")  # ... unless set
    assert c.stats()["hits"] == 1 and c.stats()["misses"] == 1


def test_ttl() -> None:
    clock = Clock()
    c = ResponseCache(CacheConfig(ttl_s=10), clock=clock)
    c.put("k", b"x")
    clock.t += 9.9
    assert c.get("k") == b"x"
    clock.t += 0.2
    assert c.get("k") is None and len(c) == 0 and c.bytes == 0
    assert c.stats()["expirations"] == 1


def test_bounded_in_entries_and_bytes_lru() -> None:
    c = ResponseCache(CacheConfig(max_entries=3, max_bytes=10_000))
    for i in range(3):
        c.put(f"k{i}", b"x" * 10)
    assert c.get("k0") == b"x" * 10  # k0 is now most recent
    c.put("k3", b"y")
    assert c.get("k1") is None and c.get("k0") is not None and len(c) == 3
    b = ResponseCache(CacheConfig(max_entries=100, max_bytes=100))
    for i in range(5):
        b.put(f"k{i}", bytes(30))
    assert b.bytes <= 100 and len(b) == 3 and b.stats()["evictions"] == 2
    assert not b.put("huge", bytes(101)) and b.get("huge") is None  # larger than the bound: not cached
    b.put("k4", bytes(10))  # replacing an entry re-counts its bytes
    assert b.bytes == 70


def test_bad_config() -> None:
    for kw in ({"max_entries": 0}, {"max_bytes": -1}, {"ttl_s": 0}):
        with pytest.raises(ConfigError):
            CacheConfig(**kw)


def test_threads_and_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    c = ResponseCache(CacheConfig(max_entries=50))
    reg = CollectorRegistry()
    c.register_metrics(reg)

    def work(t: int) -> None:
        for i in range(500):
            k = f"k{(i * 7 + t) % 80}"
            if c.get(k) is None:
                c.put(k, b"v" * (i % 13 + 1))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    s = c.stats()
    assert s["hits"] + s["misses"] == 2000 and s["entries"] <= 50
    assert s["bytes"] == sum(len(v) for _, v in c._data.values())  # byte count stays exact under contention
    text = generate_latest(reg).decode()
    assert f"llmpress_response_cache_hits_total {float(s['hits'])}" in text
    assert "llmpress_response_cache_entries" in text and "llmpress_response_cache_bytes" in text
