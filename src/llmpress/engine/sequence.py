"""One request's state: prompt, generated tokens, KV block table, sampling knobs (nano-vllm's Sequence)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

from llmpress.errors import ConfigError


@dataclass
class SamplingParams:
    """How to pick the next token and when to stop; validated on construction."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: chosen token + top-k alternatives
    prompt_logprobs: int | None = None  # same, for every prompt token (echo + logprobs scoring)
    timeout: float | None = None  # seconds from arrival

    def __post_init__(self) -> None:
        def bad(param: str, msg: str, fix: str) -> ConfigError:
            return ConfigError(f"{param} {msg}", fix, param=param)

        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise bad("max_tokens", f"must be a non-negative integer, got {self.max_tokens!r}", "pass max_tokens >= 0")
        if self.temperature < 0:
            raise bad("temperature", f"must be >= 0, got {self.temperature}", "use 0 for greedy, e.g. 0.7 to sample")
        if self.top_k < 0:
            raise bad("top_k", f"must be >= 0, got {self.top_k}", "use 0 to disable top-k")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}", "use 1.0 to disable nucleus sampling")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", f"must be in [0, 1], got {self.min_p}", "use 0 to disable min-p")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", f"must be > 0, got {self.repetition_penalty}", "use 1.0 to disable it")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise bad(name, f"must be in [-2, 2], got {getattr(self, name)}", "use 0 to disable it")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 20:
                raise bad(name, f"must be in [0, 20], got {v}", "ask for at most 20 alternatives")
        if self.timeout is not None and self.timeout <= 0:
            raise bad("timeout", f"must be > 0 seconds, got {self.timeout}", "omit it or pass a positive number")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


_ids = itertools.count()


class Sequence:
    """Tokens so far (prompt + output), how many have KV in the cache, and the block table holding it."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None,
                 block_size: int = 16) -> None:
        self.seq_id = next(_ids)
        self.request_id = request_id if request_id is not None else str(self.seq_id)
        self.params = params
        self.block_size = block_size
        self.token_ids: list[int] = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.num_computed = 0  # tokens whose KV is in the cache
        self.num_cached_prefix = 0  # of those, how many came from the prefix cache
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # prefix-cache hash of each full, computed block
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.arrival = time.perf_counter()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self.logprobs: list[dict[str, Any]] = []  # per output token: {"token", "logprob", "top": {id: lp}}
        self.prompt_logprobs: list[dict[str, Any] | None] = []  # per prompt token (first is None)
        self.generator: Any = None  # torch.Generator when sampling with a seed
        self.detok: Any = None  # the engine's IncrementalDetokenizer for this sequence
        self.published_tokens = 0  # output tokens already sent in a StepOutput
        self.published_logprobs = 0  # logprob / prompt-logprob entries already sent in a StepOutput
        self.published_prompt_logprobs = 0

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def num_pending(self) -> int:
        """Tokens not yet in the KV cache; 1 in decode, more in (chunked) prefill or after a preemption."""
        return len(self.token_ids) - self.num_computed

    @property
    def in_prefill(self) -> bool:
        return self.num_pending > 1

    def num_blocks_for(self, n_tokens: int) -> int:
        return (n_tokens + self.block_size - 1) // self.block_size

    def block_tokens(self, i: int) -> list[int]:
        return self.token_ids[i * self.block_size:(i + 1) * self.block_size]

    def finish(self, reason: str) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.finish_time = time.perf_counter()

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival
