"""The engine loop: admit requests, schedule, run one step, sample, publish (nano-vllm's LLMEngine).

`LLMEngine.step()` is synchronous and owned by one thread. Requests arrive from other threads through
a locked inbox (`add` / `abort`); what a step produced leaves as immutable `StepOutput`s. The thread
that drives it in a server lives in `llmpress.server.driver`; the offline API is `engine.offline.LLM`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch

from llmpress.engine.block_manager import BlockManager
from llmpress.engine.config import EngineConfig
from llmpress.engine.intake import RequestIntake
from llmpress.engine.lite import load_for_engine
from llmpress.engine.model_runner import ModelRunner, check_context
from llmpress.engine.outputs import StepOutput
from llmpress.engine.sampler import sample, top_logprobs
from llmpress.engine.scheduler import Scheduler, SchedulerConfig
from llmpress.engine.sequence import SamplingParams, Sequence
from llmpress.errors import ConfigError

log = logging.getLogger("llmpress.engine")


class LLMEngine(RequestIntake):
    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self._init_intake(tokenizer, cfg.max_waiting)
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
        self.faults = 0  # model failures on a single request (that request failed alone)
        self.consecutive_faults = 0  # steps in a row where every request the model ran failed

    @classmethod
    def from_artifact(cls, artifact: Any, **config: Any) -> LLMEngine:
        """The engine on `artifact`, its model and tokenizer built without transformers when they can be
        (engine/lite.py, engine/tokenizer.py)."""
        from llmpress.engine import tokenizer

        return cls(load_for_engine(artifact), tokenizer.load_for_engine(artifact), EngineConfig(**config))

    # -- requests (any thread; add / abort are RequestIntake's) ----------------------------
    def make_sequence(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> Sequence:
        """Validate a request against the model and the KV budget; raises a clear error instead of queueing it."""
        self.check_prompt(prompt_ids, self.runner.vocab_size)
        check_context(len(prompt_ids), params.max_tokens, self.max_model_len)
        need = -(-(len(prompt_ids) + params.max_tokens) // self.config.block_size)
        if need > self.runner.num_blocks:
            raise ConfigError(f"the request needs {need} KV blocks but the cache holds {self.runner.num_blocks} "
                              f"({self.runner.kv_cache_mb:.0f} MiB)",
                              "shorten the prompt / max_tokens or start the server with a larger --kv-cache-mb",
                              param="max_tokens")
        return Sequence(prompt_ids, params, request_id, self.config.block_size)

    # -- the queue behind RequestIntake: the scheduler's ----------------------------------
    def _enqueue(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def _queued(self) -> int:
        return len(self.scheduler.waiting)

    def _live(self) -> Iterable[Sequence]:
        return chain(self.scheduler.running, self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    # -- the step (engine thread only) ---------------------------------------------------
    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        self.scheduler.remove(seq)
        seq.error = error
        seq.finish(reason)

    def _run_isolated(self, items: list[tuple[Sequence, int]], num_decode: int,
                      want_all: set[int]) -> tuple[list[tuple[int, torch.Tensor]], list[tuple[int, str]]]:
        """The batch failed: run each request alone, so one bad request fails alone.

        Returns (index, its logits rows) for the requests that ran and (index, error) for those that
        failed again on their own.
        """
        ok: list[tuple[int, torch.Tensor]] = []
        failed: list[tuple[int, str]] = []
        for i, item in enumerate(items):
            try:
                logits, spans = self.runner.run([item], 1 if i < num_decode else 0, {0} if i in want_all else None)
                start, count = spans[0]
                ok.append((i, logits[start:start + count]))
            except Exception as e:  # the model failed on this request alone
                log.exception("engine failed on request %s", item[0].request_id)
                failed.append((i, f"{e.__class__.__name__}: {e}"))
        return ok, failed

    def step(self) -> list[StepOutput]:
        """Run one scheduling step; returns an immutable output for every sequence it touched."""
        touched = self._admit()
        sched = self.scheduler.schedule()
        if sched.empty:
            return self._publish(touched)
        items = sched.items
        want_all = {i for i, (s, _) in enumerate(items)
                    if s.params.prompt_logprobs is not None and s.num_computed < s.num_prompt_tokens
                    and len(s.prompt_logprobs) <= s.num_computed}  # not again after a preemption
        try:
            logits, spans = self.runner.run(items, sched.num_decode, want_all or None)
            rows = [(i, logits[start:start + count]) for i, (start, count) in enumerate(spans)]
            failed: list[tuple[int, str]] = []
        except Exception:
            log.exception("engine step failed on a batch of %d; retrying its requests one by one", len(items))
            rows, failed = self._run_isolated(items, sched.num_decode, want_all)
        for i, err in failed:
            self.faults += 1
            self._finish(items[i][0], "error", err)
            touched.append(items[i][0])
        if failed and not rows:
            self.consecutive_faults += 1
            if self.consecutive_faults >= self.config.max_consecutive_faults and self.unhealthy is None:
                self.unhealthy = f"{self.consecutive_faults} steps in a row failed; last error: {failed[-1][1]}"
                log.error("engine unhealthy: %s; refusing new work until restarted", self.unhealthy)
            return self._publish(touched)
        self.consecutive_faults = 0
        self.steps += 1
        to_sample: list[Sequence] = []
        last_rows: list[torch.Tensor] = []
        for i, out in rows:
            seq, n = items[i]
            if i in want_all:
                self._prompt_logprobs(seq, n, out)
            seq.num_computed += n
            self.blocks.register_computed(seq)
            if seq.num_computed == len(seq):
                to_sample.append(seq)
                last_rows.append(out[-1])
        if to_sample:
            self._sample(to_sample, torch.stack(last_rows))
            touched += to_sample
        return self._publish(touched)

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
                self._finish(seq, "length")
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
            elif seq.detok.add(tok):  # a stop string: the text is already cut before it
                reason = "stop"
            elif seq.num_output_tokens >= p.max_tokens:
                reason = "length"
            if reason:
                self._finish(seq, reason)

    def _publish(self, seqs: list[Sequence]) -> list[StepOutput]:
        return publish(seqs)


def publish(seqs: list[Sequence]) -> list[StepOutput]:
    """Freeze what each touched sequence gained since its last output (every engine backend publishes
    through this, so the server reads one contract)."""
    outs = []
    seen: set[int] = set()
    for seq in seqs:
        if seq.seq_id in seen:
            continue
        seen.add(seq.seq_id)
        fin = seq.is_finished
        new_ids = tuple(seq.output_ids[seq.published_tokens:])
        seq.published_tokens = seq.num_output_tokens
        text = ""
        if seq.detok is not None:  # None: finished before it was ever admitted
            if fin:
                seq.detok.flush()
            text = seq.detok.take(final=fin)
        lp = tuple(seq.logprobs[seq.published_logprobs:])
        seq.published_logprobs = len(seq.logprobs)
        plp = tuple(seq.prompt_logprobs[seq.published_prompt_logprobs:])
        seq.published_prompt_logprobs = len(seq.prompt_logprobs)
        outs.append(StepOutput(
            seq_id=seq.seq_id, request_id=seq.request_id, token_ids=new_ids, text=text,
            finish_reason=seq.finish_reason if fin else None, error=seq.error,
            num_prompt_tokens=seq.num_prompt_tokens, num_output_tokens=seq.num_output_tokens,
            num_cached_tokens=seq.num_cached_prefix, logprobs=lp, prompt_logprobs=plp, ttft=seq.ttft,
            latency=None if seq.finish_time is None else seq.finish_time - seq.arrival))
    return outs
