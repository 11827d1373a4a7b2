"""Decides what runs in the next step: continuous batching with chunked prefill (nano-vllm's Scheduler).

Each step first gives every running sequence in decode its one token, then fills the remaining
token budget with prefill chunks (continuing ones first, then new arrivals). So new requests join
between decode steps, a long prompt is prefilled a chunk at a time without stalling decodes, and
finished sequences leave at once. When KV memory runs out, the newest running sequence is preempted
(its blocks freed, recomputed later) rather than failing anyone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from llmpress.engine.block_manager import BlockManager
from llmpress.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerConfig:
    max_batch: int = 32  # sequences in one step
    max_tokens_per_step: int = 512  # decode tokens + prefill chunk tokens
    max_waiting: int = 256  # bounded queue: beyond it, add() refuses


@dataclass
class Scheduled:
    """One step's work: (sequence, number of new tokens to feed) pairs; decodes first."""

    items: list[tuple[Sequence, int]]
    num_decode: int

    @property
    def empty(self) -> bool:
        return not self.items


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.cfg = config
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def queue_full(self) -> bool:
        return len(self.waiting) >= self.cfg.max_waiting

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is and free its blocks (finish, abort, timeout)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free_seq(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_seq(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def schedule(self) -> Scheduled:
        budget = self.cfg.max_tokens_per_step
        decodes: list[tuple[Sequence, int]] = []
        prefills: list[tuple[Sequence, int]] = []
        # 1. running sequences: decodes (one token each), then unfinished prefills (a chunk each).
        for seq in [s for s in self.running if not s.in_prefill]:
            if seq not in self.running:
                continue  # preempted below while making room
            while not self.blocks.can_grow(seq, seq.num_computed + 1):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                self.blocks.grow(seq, seq.num_computed + 1)
                decodes.append((seq, 1))
                budget -= 1
        for seq in self.running:
            if seq.in_prefill and budget > 0:
                n = min(seq.num_pending, budget)
                if self.blocks.grow(seq, seq.num_computed + n):
                    prefills.append((seq, n))
                    budget -= n
        # 2. new arrivals while the batch and the budget allow.
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_batch:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq, budget):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq, 0)
            n = min(seq.num_pending, budget)
            if not self.blocks.grow(seq, seq.num_computed + n):  # pragma: no cover - checked above
                self.blocks.free_seq(seq)
                self.waiting.appendleft(seq)
                break
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            prefills.append((seq, n))
            budget -= n
        return Scheduled(decodes + prefills, len(decodes))
