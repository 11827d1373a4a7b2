"""The engine loop: admit requests, schedule, run one step, sample, finish (nano-vllm's LLMEngine).

`LLMEngine.step()` is synchronous and single-threaded; `EngineThread` drives it in the background
for the server (requests arrive from the event loop through a thread-safe inbox), and `LLM` is the
offline API: `LLM(artifact).generate(prompts, SamplingParams(...))`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmpress.engine.block_manager import BlockManager
from llmpress.engine.model_runner import ModelRunner, check_context
from llmpress.engine.sampler import sample, top_logprobs
from llmpress.engine.scheduler import Scheduler, SchedulerConfig
from llmpress.engine.sequence import SamplingParams, Sequence
from llmpress.errors import ConfigError, DataError, OverloadedError

log = logging.getLogger("llmpress.engine")


@dataclass
class EngineConfig:
    """Engine knobs; the memory budget (`kv_cache_mb`) fixes the number of KV blocks once, at start."""

    max_batch: int = 32
    max_tokens_per_step: int = 512
    max_waiting: int = 256
    block_size: int = 16
    kv_cache_mb: float = 256.0
    enable_prefix_caching: bool = True
    num_threads: int | None = None
    extra_eos_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_tokens_per_step", "max_waiting", "block_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"engine setting {name} must be a positive integer, got {v!r}",
                                  f"pass --{name.replace('_', '-')} >= 1", param=name)
        if self.kv_cache_mb <= 0:
            raise ConfigError(f"kv_cache_mb must be > 0, got {self.kv_cache_mb}", "pass e.g. --kv-cache-mb 256",
                              param="kv_cache_mb")


@dataclass
class RequestOutput:
    """What a finished request produced (offline API)."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    ttft: float | None
    latency: float | None
    logprobs: list[dict[str, Any]]
    prompt_logprobs: list[dict[str, Any] | None]
    num_cached_tokens: int


class LLMEngine:
    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.tokenizer = tokenizer
        self.runner = ModelRunner(model, cfg.block_size, int(cfg.kv_cache_mb * 2**20))
        self.blocks = BlockManager(self.runner.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(cfg.max_batch, cfg.max_tokens_per_step, cfg.max_waiting),
                                   self.blocks)
        self.max_model_len = self.runner.max_model_len
        eos: set[int] = set(cfg.extra_eos_ids)
        for src in (getattr(tokenizer, "eos_token_id", None),
                    getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, list):
                eos.update(int(x) for x in src)
        self.eos_ids = eos
        self._inbox: deque[Sequence] = deque()
        self._aborts: deque[Sequence] = deque()
        self.lock = threading.Lock()
        self.steps = 0
        self.tokens_out = 0

    @classmethod
    def from_artifact(cls, artifact: Any, **config: Any) -> LLMEngine:
        return cls(artifact.load_model(), artifact.load_tokenizer(), EngineConfig(**config))

    # -- requests ----------------------------------------------------------------------
    def make_sequence(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> Sequence:
        """Validate a request against the model and the KV budget; raises a clear error instead of queueing it."""
        if not prompt_ids:
            raise DataError("the prompt is empty", "send at least one token of prompt", param="prompt")
        vocab = self.runner.vocab_size
        if min(prompt_ids) < 0 or (vocab and max(prompt_ids) >= vocab):
            raise DataError(f"prompt token ids must be in [0, {vocab})", "send ids from this model's tokenizer",
                            param="prompt")
        check_context(len(prompt_ids), params.max_tokens, self.max_model_len)
        need = -(-(len(prompt_ids) + params.max_tokens) // self.config.block_size)
        if need > self.runner.num_blocks:
            raise ConfigError(f"the request needs {need} KV blocks but the cache holds {self.runner.num_blocks} "
                              f"({self.runner.kv_cache_mb:.0f} MiB)",
                              "shorten the prompt / max_tokens or start the server with a larger --kv-cache-mb",
                              param="max_tokens")
        return Sequence(prompt_ids, params, request_id, self.config.block_size)

    def add(self, seq: Sequence) -> None:
        """Queue a validated sequence (thread-safe); refuses when the bounded queue is full."""
        with self.lock:
            if len(self._inbox) + len(self.scheduler.waiting) >= self.config.max_waiting:
                raise OverloadedError(f"the request queue is full ({self.config.max_waiting} waiting)",
                                      "retry after a few seconds")
            self._inbox.append(seq)

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> Sequence:
        seq = self.make_sequence(prompt_ids, params, request_id)
        self.add(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        """Cancel a request (client gone); its blocks are freed at the next step (thread-safe)."""
        with self.lock:
            self._aborts.append(seq)

    @property
    def num_waiting(self) -> int:
        return len(self._inbox) + len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    def has_work(self) -> bool:
        return bool(self._inbox or self.scheduler.has_work())

    # -- the step ------------------------------------------------------------------------
    def _admit(self) -> list[Sequence]:
        done: list[Sequence] = []
        with self.lock:
            while self._inbox:
                self.scheduler.add(self._inbox.popleft())
            while self._aborts:
                seq = self._aborts.popleft()
                if not seq.is_finished:
                    self.scheduler.remove(seq)
                    seq.finish("abort")
                    done.append(seq)
        now = time.perf_counter()
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            t = seq.params.timeout
            if t is not None and now - seq.arrival > t:
                self.scheduler.remove(seq)
                seq.finish("timeout")
                done.append(seq)
            elif seq.params.max_tokens == 0 and seq.params.prompt_logprobs is None:
                self.scheduler.remove(seq)
                seq.finish("length")
                done.append(seq)
        return done

    def step(self) -> list[Sequence]:
        """Run one scheduling step; returns sequences that got a token or finished (for streaming)."""
        touched = self._admit()
        sched = self.scheduler.schedule()
        if sched.empty:
            return touched
        items = sched.items
        want_all = {i for i, (s, _) in enumerate(items)
                    if s.params.prompt_logprobs is not None and s.num_computed < s.num_prompt_tokens
                    and len(s.prompt_logprobs) <= s.num_computed}  # not again after a preemption
        try:
            logits, spans = self.runner.run(items, sched.num_decode, want_all or None)
        except Exception as e:  # one bad batch must not stop the engine: fail its requests, go on
            log.exception("engine step failed")
            for seq, _ in items:
                self.scheduler.remove(seq)
                seq.error = f"{e.__class__.__name__}: {e}"
                seq.finish("error")
            return touched + [s for s, _ in items]
        self.steps += 1
        to_sample: list[Sequence] = []
        rows: list[int] = []
        for i, (seq, n) in enumerate(items):
            start, count = spans[i]
            if i in want_all:
                self._prompt_logprobs(seq, n, logits[start:start + count])
            seq.num_computed += n
            self.blocks.register_computed(seq)
            if seq.num_computed == len(seq):
                to_sample.append(seq)
                rows.append(start + count - 1)
        if to_sample:
            sub = logits.index_select(0, torch.tensor(rows)) if len(rows) != logits.shape[0] else logits
            self._sample(to_sample, sub)
            touched += to_sample
        return touched

    def _prompt_logprobs(self, seq: Sequence, n: int, rows: torch.Tensor) -> None:
        start = seq.num_computed
        if start == 0:
            seq.prompt_logprobs.append(None)
        # row j predicts token at position start + j + 1 (only those inside the prompt)
        targets = seq.token_ids[start + 1:min(start + n + 1, seq.num_prompt_tokens)]
        if targets:
            seq.prompt_logprobs += top_logprobs(rows[:len(targets)], targets, seq.params.prompt_logprobs or 0)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        tokens = sample(logits, seqs)
        need_lp = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        lps: dict[int, dict[str, Any]] = {}
        if need_lp:
            k = max(seqs[i].params.logprobs or 0 for i in need_lp)
            res = top_logprobs(logits[torch.tensor(need_lp)], [tokens[i] for i in need_lp], k)
            for j, i in enumerate(need_lp):
                kk = seqs[i].params.logprobs or 0
                r = res[j]
                lps[i] = {**r, "top": dict(list(r["top"].items())[:kk])}
        now = time.perf_counter()
        for i, seq in enumerate(seqs):
            p = seq.params
            if p.max_tokens == 0:  # echo-only scoring: prompt logprobs computed, nothing generated
                self.scheduler.remove(seq)
                seq.finish("length")
                continue
            tok = tokens[i]
            seq.token_ids.append(tok)
            self.tokens_out += 1
            if i in lps:
                seq.logprobs.append(lps[i])
            if seq.first_token_time is None:
                seq.first_token_time = now
            reason = None
            if (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids:
                reason = "stop"
            elif p.stop and self._hit_stop_string(seq):
                reason = "stop"
            elif seq.num_output_tokens >= p.max_tokens:
                reason = "length"
            if reason:
                self.scheduler.remove(seq)
                seq.finish(reason)

    def _hit_stop_string(self, seq: Sequence) -> bool:
        text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
        cuts = [text.find(s) for s in seq.params.stop if s and s in text]
        if cuts:
            seq.stop_text_len = min(cuts)  # type: ignore[attr-defined]
            return True
        return False

    def text_of(self, seq: Sequence) -> str:
        """The output text, cut before a stop string if one ended the request."""
        text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
        cut = getattr(seq, "stop_text_len", None)
        return text[:cut] if cut is not None else text


class EngineThread:
    """Drives `LLMEngine.step` in a background thread; wakes on new work; `on_update(seq)` per touched sequence.

    `run_here()` drives it in the calling thread instead, and `start()` then only marks it alive. `llmpress
    serve` runs the loop on the main thread, where the model was loaded: torch's OpenMP runtime keeps one
    worker pool per thread that runs parallel regions, and with a second pool on a 2-core machine libgomp
    stops spinning and every op pays a futex wake-up — measured here, int8 SmolLM2 decodes at 61 tok/s
    from the loading thread and at 30 tok/s from a fresh one.
    """

    def __init__(self, engine: LLMEngine, on_update: Callable[[Sequence], None]) -> None:
        self.engine = engine
        self.on_update = on_update
        self._wake = threading.Event()
        self._stop = False
        self.thread = threading.Thread(target=self._loop, name="llmpress-engine", daemon=True)
        self.alive = False
        self._external = False

    def start(self) -> None:
        self.alive = True
        if not self._external:
            self.thread.start()

    def run_here(self) -> None:
        """Run the loop in this thread until `stop()`; call before the app starts (its lifespan calls start())."""
        self._external = True
        self.alive = True
        try:
            self._loop()
        finally:
            self.alive = False

    def submit(self, seq: Sequence) -> None:
        self.engine.add(seq)
        self._wake.set()

    def abort(self, seq: Sequence) -> None:
        self.engine.abort(seq)
        self._wake.set()

    def wake(self) -> None:
        """Make an idle loop look at its state now (new work, or a stop request) instead of in 0.5 s."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop = True
        self._wake.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def _loop(self) -> None:
        eng = self.engine
        while not self._stop:
            if not eng.has_work() and not eng._aborts:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                touched = eng.step()
            except Exception:  # pragma: no cover - step already isolates model errors
                log.exception("engine loop error")
                time.sleep(0.01)
                continue
            for seq in touched:
                try:
                    self.on_update(seq)
                except Exception:  # pragma: no cover
                    log.exception("output callback failed")
        self.alive = False


class LLM:
    """Offline batch API: `LLM(artifact, **engine_config).generate(prompts, SamplingParams(...))`."""

    def __init__(self, artifact: Any, **config: Any) -> None:
        if isinstance(artifact, str):
            from llmpress.sources import resolve

            artifact = resolve(artifact)
        self.artifact = artifact
        self.engine = LLMEngine.from_artifact(artifact, **config)
        self.tokenizer = self.engine.tokenizer

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **config: Any) -> LLM:
        """The offline API over an already-loaded model (used by `evaluate.speed`)."""
        self = cls.__new__(cls)
        self.artifact = None
        self.engine = LLMEngine(model, tokenizer, EngineConfig(**config))
        self.tokenizer = tokenizer
        return self

    def generate(self, prompts: list[list[int]] | list[str], params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool = False) -> list[RequestOutput]:
        """Run all prompts (token-id lists or strings) to completion with continuous batching; outputs in input order."""
        params = params or SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(prompts)
        seqs: list[Sequence] = []
        for i, (pr, sp) in enumerate(zip(prompts, plist, strict=True)):
            ids = self.tokenizer.encode(pr) if isinstance(pr, str) else list(pr)
            seq = self.engine.make_sequence(ids, sp, str(i))
            self.engine.scheduler.add(seq)  # offline: no queue bound
            seqs.append(seq)
        while self.engine.has_work():
            self.engine.step()
        return [RequestOutput(s.request_id, s.token_ids[:s.num_prompt_tokens], s.output_ids, self.engine.text_of(s),
                              s.finish_reason, s.ttft,
                              None if s.finish_time is None else s.finish_time - s.arrival,
                              s.logprobs, s.prompt_logprobs, s.num_cached_prefix) for s in seqs]
