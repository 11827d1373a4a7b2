"""One HTTP request's view of its sequences, built only from the engine's immutable `StepOutput`s.

The engine thread hands each output to `RequestHandle.sink`, which only enqueues it on the event
loop; the event loop applies outputs to per-choice accumulators it alone owns. Nothing the engine
mutates is ever read here, so a stream can neither drop its last delta nor leak a stop string.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from llmpress.engine import Sequence, StepOutput
from llmpress.errors import EngineFaultError, LlmpressError


class ClientGone(Exception):
    """The client hung up before its answer was ready (recorded as status 499)."""


@dataclass
class Choice:
    """Everything one sequence produced, as read from its outputs."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    prompt_logprobs: list[dict[str, Any] | None] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    ttft: float | None = None
    latency: float | None = None
    num_cached_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class RequestHandle:
    """The sequences of one request (n choices x prompts) and the queue the engine feeds."""

    def __init__(self, seqs: list[Sequence], n: int = 1) -> None:
        self.n = n  # choices per prompt: seqs are prompt-major, n consecutive sequences share a prompt
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[StepOutput] = asyncio.Queue()
        self.seqs = seqs
        self.choices = [Choice(list(s.token_ids)) for s in seqs]
        self.index = {s.seq_id: i for i, s in enumerate(seqs)}
        self._checked = time.monotonic()

    def sink(self, out: StepOutput) -> None:
        """Called on the engine thread: only hand the output over to the event loop."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, out)

    def apply(self, out: StepOutput) -> int:
        i = self.index[out.seq_id]
        c = self.choices[i]
        c.token_ids += out.token_ids
        if out.text:
            c.parts.append(out.text)
        c.logprobs += out.logprobs
        c.prompt_logprobs += out.prompt_logprobs
        c.num_cached_tokens = out.num_cached_tokens
        if out.ttft is not None:
            c.ttft = out.ttft
        if out.finished:
            c.finish_reason, c.error, c.latency = out.finish_reason, out.error, out.latency
        return i

    @property
    def done(self) -> bool:
        return all(c.finished for c in self.choices)

    @property
    def tokens_in(self) -> int:
        """Prompt tokens, each prompt counted once however many choices it has (as OpenAI bills)."""
        return sum(len(c.prompt_ids) for c in self.choices[::self.n])

    @property
    def tokens_out(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)

    def timings(self) -> tuple[list[float], list[float]]:
        """TTFTs and mean time per output token after the first, for the metrics."""
        ttfts = [c.ttft for c in self.choices if c.ttft is not None]
        tpots = [(c.latency - c.ttft) / (len(c.token_ids) - 1) for c in self.choices
                 if c.latency is not None and c.ttft is not None and len(c.token_ids) > 1]
        return ttfts, tpots

    async def next(self, request: Request) -> StepOutput:
        """The next output; raises ClientGone when the client has gone away (checked every 0.5 s,
        also while outputs keep coming, so a busy request notices a hang-up too)."""
        while True:
            now = time.monotonic()
            if now - self._checked > 0.5:
                self._checked = now
                if await request.is_disconnected():
                    raise ClientGone("the client closed the connection")
            try:
                return await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except TimeoutError:
                continue

    async def wait(self, request: Request) -> None:
        while not self.done:
            self.apply(await self.next(request))

    def raise_failed(self) -> None:
        for c in self.choices:
            if c.finish_reason == "error":
                raise EngineFaultError(f"the engine failed on this request ({c.error})",
                                       "retry; report it with the x-request-id if it persists")
            if c.finish_reason == "timeout":
                e = LlmpressError("the request timed out", "raise `timeout` or lower max_tokens")
                e.http_status = 504
                e.error_type = "timeout_error"
                raise e


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def stream_error_event(c: Choice) -> str:
    status, etype = (504, "timeout_error") if c.finish_reason == "timeout" else (500, "server_error")
    msg = c.error or f"request {c.finish_reason}"
    return sse({"error": {"message": msg, "type": etype, "param": None, "code": c.finish_reason, "status": status}})


class SettlingStream(StreamingResponse):
    """A streaming response whose `on_close` runs however the response ends, even when the client
    leaves before the body generator was ever started (then its own `finally` would never run)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, media_type="text/event-stream", **kw)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
