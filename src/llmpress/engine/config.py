"""Engine knobs (one config object for the engine step, as every step has)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmpress.errors import ConfigError


@dataclass
class EngineConfig:
    """Engine knobs; the memory budget (`kv_cache_mb`) fixes the number of KV blocks once, at start.

    `max_consecutive_faults`: after this many steps in a row where the model failed on every request it
    ran, the engine calls itself unhealthy and refuses new work (the server's /ready answers 503).
    """

    max_batch: int = 32
    max_tokens_per_step: int = 512
    max_waiting: int = 256
    block_size: int = 16
    kv_cache_mb: float = 256.0
    enable_prefix_caching: bool = True
    num_threads: int | None = None
    extra_eos_ids: list[int] = field(default_factory=list)
    max_consecutive_faults: int = 3

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_tokens_per_step", "max_waiting", "block_size", "max_consecutive_faults"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"engine setting {name} must be a positive integer, got {v!r}",
                                  f"pass --{name.replace('_', '-')} >= 1", param=name)
        if self.kv_cache_mb <= 0:
            raise ConfigError(f"kv_cache_mb must be > 0, got {self.kv_cache_mb}", "pass e.g. --kv-cache-mb 256",
                              param="kv_cache_mb")
