"""The request side every engine shares: prompt checks, a bounded locked inbox, aborts, and admission.

Requests arrive from other threads (`add`, `abort`); the engine thread calls `_admit` at the top of each
step, which moves the inbox into the engine's own queue and finishes what was aborted, timed out or asks
for no tokens. `LLMEngine` (torch) and `backends.ort.OrtGenAIEngine` differ only in the queue behind it:
each implements `_enqueue`, `_queued`, `_live` and `_finish`.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from llmpress.engine.detokenizer import IncrementalDetokenizer
from llmpress.engine.sequence import Sequence
from llmpress.errors import DataError, EngineUnhealthyError, OverloadedError


class RequestIntake:
    max_waiting: int

    def _init_intake(self, tokenizer: Any, max_waiting: int) -> None:
        # `tokenizer` belongs to the caller's thread (the server encodes prompts with it); the engine
        # thread detokenizes with its own copy: transformers' tokenizer may reconfigure its Rust object
        # while encoding, which fails ("Already borrowed") while another thread decodes. A tokenizer
        # that only reads it (engine/tokenizer.py, `thread_safe`) is shared.
        self.tokenizer = tokenizer
        self._detok_tokenizer = tokenizer if getattr(tokenizer, "thread_safe", False) else copy.deepcopy(tokenizer)
        self.max_waiting = max_waiting
        self._inbox: deque[Sequence] = deque()
        self._aborts: deque[Sequence] = deque()
        self.lock = threading.Lock()
        self.steps = 0
        self.tokens_out = 0
        self.unhealthy: str | None = None  # why the engine refuses new work, once it does

    # -- engine-specific queue ------------------------------------------------------------
    def _enqueue(self, seq: Sequence) -> None:
        raise NotImplementedError

    def _queued(self) -> int:
        """Admitted sequences still waiting for their first step."""
        raise NotImplementedError

    def _live(self) -> Iterable[Sequence]:
        """Every admitted, unfinished sequence (running and waiting)."""
        raise NotImplementedError

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        raise NotImplementedError

    # -- requests (any thread) -------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.unhealthy is None

    @staticmethod
    def check_prompt(prompt_ids: list[int], vocab: int) -> None:
        if not prompt_ids:
            raise DataError("the prompt is empty", "send at least one token of prompt", param="prompt")
        if min(prompt_ids) < 0 or (vocab and max(prompt_ids) >= vocab):
            raise DataError(f"prompt token ids must be in [0, {vocab})", "send ids from this model's tokenizer",
                            param="prompt")

    def add(self, seq: Sequence) -> None:
        """Queue a validated sequence (thread-safe); refuses when unhealthy or when the bounded queue is full."""
        with self.lock:
            if self.unhealthy is not None:
                raise EngineUnhealthyError(f"the engine is unhealthy and takes no new work ({self.unhealthy})",
                                           "restart the server; its log has the failing step's traceback")
            if len(self._inbox) + self._queued() >= self.max_waiting:
                raise OverloadedError(f"the request queue is full ({self.max_waiting} waiting)",
                                      "retry after a few seconds")
            self._inbox.append(seq)

    def add_request(self, prompt_ids: list[int], params: Any, request_id: str | None = None) -> Sequence:
        seq = self.make_sequence(prompt_ids, params, request_id)  # type: ignore[attr-defined]
        self.add(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        """Cancel a request (client gone); it is finished at the next step (thread-safe)."""
        with self.lock:
            self._aborts.append(seq)

    @property
    def num_waiting(self) -> int:
        return len(self._inbox) + self._queued()

    def has_work(self) -> bool:
        return bool(self._inbox or self._aborts or any(True for _ in self._live()))

    # -- the engine thread ------------------------------------------------------------------
    def _admit(self) -> list[Sequence]:
        """Move the inbox into the engine's queue; finish aborted, timed-out and zero-token requests."""
        done: list[Sequence] = []
        with self.lock:
            while self._inbox:
                seq = self._inbox.popleft()
                seq.detok = IncrementalDetokenizer(self._detok_tokenizer, seq.token_ids, seq.params.stop)
                self._enqueue(seq)
            aborts = list(self._aborts)
            self._aborts.clear()
        for seq in aborts:
            if not seq.is_finished:
                self._finish(seq, "abort")
                done.append(seq)
        now = time.perf_counter()
        for seq in list(self._live()):
            t = seq.params.timeout
            if t is not None and now - seq.arrival > t:
                self._finish(seq, "timeout")
                done.append(seq)
            elif seq.params.max_tokens == 0 and seq.params.prompt_logprobs is None:
                self._finish(seq, "length")
                done.append(seq)
        return done
