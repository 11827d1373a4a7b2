"""The thread that drives the engine in a server: exactly one engine loop per process, by construction.

Where the loop runs is fixed when the driver is built, never decided by timing:
- `loop="caller"`: the owner calls `run_here()` (what `llmpress serve` does on the main thread, where the
  model was loaded: torch's OpenMP runtime keeps one worker pool per thread that runs parallel regions,
  and with a second pool on a 2-core machine libgomp stops spinning and every op pays a futex wake-up —
  measured here, int8 SmolLM2 decodes at 61 tok/s from the loading thread and 30 tok/s from a fresh one);
- `loop="background"`: `start()` (the app's lifespan) starts one daemon thread (tests, embedding).
`start()` never starts a thread in caller mode, and `_loop` refuses to run twice at once.

Outputs leave through per-sequence sinks (`submit(seq, sink)`): the sink receives immutable
`StepOutput`s on the engine thread and must only hand them on (e.g. `loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from llmpress.engine import LLMEngine, Sequence, StepOutput

log = logging.getLogger("llmpress.engine")

Sink = Callable[[StepOutput], None]


class EngineDriver:
    def __init__(self, engine: LLMEngine, loop: Literal["caller", "background"] = "background") -> None:
        if loop not in ("caller", "background"):
            raise ValueError(f"loop must be 'caller' or 'background', got {loop!r}")
        self.engine = engine
        self.mode = loop
        self._wake = threading.Event()
        self._stop = False
        self._running = threading.Lock()  # held by the one thread running the loop
        self._start_lock = threading.Lock()
        self._sinks: dict[int, Sink] = {}
        self._sinks_lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.loop_thread: str | None = None  # name of the thread running the loop, for diagnostics

    @property
    def alive(self) -> bool:
        """True while the loop runs (in whichever thread the mode says)."""
        return self._running.locked() and not self._stop

    @property
    def healthy(self) -> bool:
        return self.engine.healthy

    def start(self) -> None:
        """Background mode: start the loop thread once. Caller mode: nothing (the owner calls run_here)."""
        if self.mode != "background":
            return
        with self._start_lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="llmpress-engine", daemon=True)
                self.thread.start()

    def run_here(self) -> None:
        """Caller mode: run the loop in this thread until `stop()`."""
        if self.mode != "caller":
            raise RuntimeError("run_here() needs a driver built with loop='caller'")
        self._loop()

    def submit(self, seq: Sequence, sink: Sink) -> None:
        """Queue a sequence; its outputs go to `sink` (raises OverloadedError / EngineUnhealthyError)."""
        with self._sinks_lock:
            self._sinks[seq.seq_id] = sink
        try:
            self.engine.add(seq)
        except Exception:
            with self._sinks_lock:
                self._sinks.pop(seq.seq_id, None)
            raise
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
        th = self.thread
        if th is not None and th.is_alive() and threading.current_thread() is not th:
            th.join(timeout)

    def _loop(self) -> None:
        if not self._running.acquire(blocking=False):
            raise RuntimeError(f"a second engine loop was started (one already runs in {self.loop_thread})")
        self.loop_thread = threading.current_thread().name
        eng = self.engine
        try:
            while not self._stop:
                if not eng.has_work():
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    outs = eng.step()
                except Exception:  # step isolates model errors; anything else is a bug: log, go on
                    log.exception("engine loop error")
                    time.sleep(0.01)
                    continue
                for out in outs:
                    with self._sinks_lock:
                        sink = self._sinks.pop(out.seq_id, None) if out.finished else self._sinks.get(out.seq_id)
                    if sink is None:
                        continue
                    try:
                        sink(out)
                    except Exception:  # pragma: no cover - a sink only enqueues
                        log.exception("output sink failed")
        finally:
            self._running.release()
