"""What every router of one served model shares: engine, driver, config, accounting, tokenizer.

`submit()` turns validated prompts into sequences, opens the request's account and hands the
sequences to the engine; `close()` aborts what is still running and settles the account. Routers
call `close()` in a `finally` (or a streaming response's `on_close`), so every exit path is charged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from llmpress.engine import LLMEngine, SamplingParams
from llmpress.errors import DataError, LlmpressError, NotFoundError, OverloadedError
from llmpress.registry.keys import KeyInfo, KeyStore
from llmpress.server.accounting import Accounting, Charge
from llmpress.server.driver import EngineDriver
from llmpress.server.metrics import Metrics
from llmpress.server.streaming import ClientGone, RequestHandle, SettlingStream


class StreamEnd:
    """Settles a streamed request: called by the stream just before `[DONE]` (so the usage row exists
    before the client sees the end), and again by the response's close, whatever ended it (idempotent;
    `status` says how it ended: 499 unless the stream set it)."""

    def __init__(self, ctx: ServerContext, handle: RequestHandle, charge: Charge) -> None:
        self.ctx, self.handle, self.charge = ctx, handle, charge
        self.status = 499

    def __call__(self, status: int | None = None) -> None:
        if status is not None:
            self.status = status
        self.ctx.close(self.handle, self.charge, self.status)


Stream = Callable[[Request, RequestHandle, StreamEnd], AsyncIterator[str]]


def status_of(e: BaseException) -> int:
    """The HTTP status a request that ended with `e` is recorded under (499: the client went away)."""
    if isinstance(e, LlmpressError):
        return e.http_status
    return 499 if isinstance(e, asyncio.CancelledError | GeneratorExit | ClientGone) else 500


@dataclass
class ServerConfig:
    model_name: str
    model_aliases: list[str] = field(default_factory=list)
    auth: bool = True
    drain_timeout: float = 30.0
    request_timeout: float | None = 600.0
    created: int = field(default_factory=lambda: int(time.time()))
    parent: str | None = None


@dataclass
class ServerContext:
    engine: LLMEngine
    driver: EngineDriver
    config: ServerConfig
    metrics: Metrics
    keys: KeyStore | None
    accounting: Accounting
    draining: bool = False
    inflight: int = 0

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer  # the event loop's tokenizer; the engine thread has its own copy

    def check_model(self, name: str) -> None:
        cfg = self.config
        if name != cfg.model_name and name not in cfg.model_aliases:
            raise NotFoundError(f"model {name!r} is not served here",
                                f"use model {cfg.model_name!r} (GET /v1/models)", param="model")

    def encode_prompt(self, prompt: Any) -> list[list[int]]:
        tok = self.tokenizer
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(x, int) for x in prompt):
            return [list(prompt)]
        elif isinstance(prompt, list) and prompt and all(isinstance(x, list) for x in prompt):
            return [list(x) for x in prompt]
        else:
            prompts = list(prompt)
        if not prompts or any(not p for p in prompts):
            raise DataError("prompt is empty", "send a non-empty prompt", param="prompt")
        return [tok.encode(p) for p in prompts]

    def submit(self, request_id: str, key: KeyInfo | None, endpoint: str, prompts: list[list[int]],
               make: Callable[[int], SamplingParams], n: int) -> tuple[RequestHandle, Charge]:
        """Validate, admit (limits + budget reservation) and queue a request's n x len(prompts) sequences."""
        if self.draining:
            raise OverloadedError("the server is shutting down", "retry against another replica")
        seqs = [self.engine.make_sequence(ids, make(j), f"{request_id}-{pi}-{j}")
                for pi, ids in enumerate(prompts) for j in range(n)]
        charge = self.accounting.open(key, request_id, endpoint,
                                      sum(len(s.token_ids) + s.params.max_tokens for s in seqs))
        handle = RequestHandle(seqs, n)
        try:
            for s in seqs:
                self.driver.submit(s, handle.sink)
        except BaseException as e:  # refused (queue full, engine unhealthy): nothing ran, nothing is charged
            for s in seqs:
                self.driver.abort(s)
            self.accounting.settle(charge, 0, 0, getattr(e, "http_status", 500))
            raise
        return handle, charge

    def close(self, handle: RequestHandle, charge: Charge, status: int) -> None:
        """Abort the request's unfinished sequences and settle its account (idempotent)."""
        for s, c in zip(handle.seqs, handle.choices, strict=True):
            if not c.finished:
                self.driver.abort(s)
        ttfts, tpots = handle.timings()
        self.accounting.settle(charge, handle.tokens_in, handle.tokens_out, status, ttfts, tpots)

    async def serve(self, request: Request, key: KeyInfo | None, endpoint: str, prompts: list[list[int]],
                    make: Callable[[int], SamplingParams], n: int, stream: Stream | None,
                    respond: Callable[[RequestHandle], Any]) -> Any:
        """Submit, then either stream (the response settles the account when it closes, however it
        closes) or wait and respond (settled in `finally`): every exit path is charged."""
        handle, charge = self.submit(request.state.request_id, key, endpoint, prompts, make, n)
        if stream is not None:
            end = StreamEnd(self, handle, charge)
            return SettlingStream(stream(request, handle, end), on_close=end)
        status = 499
        try:
            await handle.wait(request)
            handle.raise_failed()
            status = 200
            return respond(handle)
        except BaseException as e:
            status = status_of(e)
            raise
        finally:
            self.close(handle, charge, status)
