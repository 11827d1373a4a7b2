"""The FastAPI app: OpenAI-compatible completions / chat (with SSE), /generate, health, metrics.

Thin by design: parse and validate a request, turn it into `Sequence`s for the engine thread, and
turn engine state back into OpenAI JSON. Each request waits on its own asyncio queue that the engine
thread feeds after every step; a client that goes away aborts its sequences so their slots and KV
blocks are freed at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmpress.engine import EngineThread, LLMEngine, SamplingParams, Sequence
from llmpress.errors import (
    DataError,
    LlmpressError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
)
from llmpress.registry.keys import SCOPES, KeyInfo, KeyStore
from llmpress.server.limits import RateLimiter
from llmpress.server.metrics import Metrics
from llmpress.server.schemas import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatResponseMessage,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    GenerateRequest,
    GenerateResponse,
    ModelCard,
    ModelList,
    Usage,
)

log = logging.getLogger("llmpress.server")


@dataclass
class ServerConfig:
    model_name: str
    model_aliases: list[str] = field(default_factory=list)
    auth: bool = True
    drain_timeout: float = 30.0
    request_timeout: float | None = 600.0
    created: int = field(default_factory=lambda: int(time.time()))
    parent: str | None = None


def error_json(status: int, message: str, etype: str, param: str | None = None, code: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": etype, "param": param, "code": code}},
                        status_code=status, headers=headers)


class _Handle:
    """One HTTP request's sequences and the queue the engine thread wakes it through."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Sequence] = asyncio.Queue()
        self.seqs: list[Sequence] = []

    def notify(self, seq: Sequence) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, seq)

    @property
    def done(self) -> bool:
        return all(s.is_finished for s in self.seqs)


def create_app(engine: LLMEngine, config: ServerConfig) -> FastAPI:
    """Build the app around an engine; the engine thread starts and drains with the app's lifespan."""
    tok = engine.tokenizer
    metrics = Metrics(engine)
    limiter = RateLimiter()
    keys = KeyStore() if config.auth else None
    state: dict[str, Any] = {"draining": False, "inflight": 0}

    def on_update(seq: Sequence) -> None:
        seq.user_data(seq)

    thread = EngineThread(engine, on_update)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        thread.start()
        log.info("engine started", extra={"model": config.model_name})
        try:
            yield
        finally:
            state["draining"] = True
            deadline = time.monotonic() + config.drain_timeout
            while (state["inflight"] or engine.has_work()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            thread.stop()
            log.info("engine stopped", extra={"model": config.model_name})

    app = FastAPI(title="llmpress", version="0.1", lifespan=lifespan)
    app.state.engine = engine
    app.state.engine_thread = thread
    app.state.metrics = metrics
    app.state.server_state = state

    # -- errors: one JSON shape ----------------------------------------------------------
    @app.exception_handler(LlmpressError)
    async def _llmpress_error(request: Request, e: LlmpressError) -> JSONResponse:
        headers = None
        if isinstance(e, RateLimitError):
            headers = {"Retry-After": str(max(1, int(e.retry_after + 0.999)))}
        elif isinstance(e, OverloadedError):
            headers = {"Retry-After": "2"}
        code = "insufficient_quota" if isinstance(e, RateLimitError) and "budget" in e.message else None
        return error_json(e.http_status, e.one_line(), e.error_type, e.param, code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return error_json(400, f"malformed JSON body: {first.get('msg')}", "invalid_request_error", None,
                              "json_invalid")
        if first.get("type") == "model_attributes_type" and not loc:
            return error_json(400, "the request body must be a JSON object (send Content-Type: application/json)",
                              "invalid_request_error", None, "json_invalid")
        param = ".".join(loc) or None
        msg = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid request"))
        return error_json(422, msg, "invalid_request_error", param, first.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        etype = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_json(e.status_code, str(e.detail), etype)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": getattr(request.state, "request_id", None)})
        return error_json(500, f"internal error: {e.__class__.__name__}", "server_error")

    # -- request id, logs, metrics ---------------------------------------------------------
    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        request.state.request_id = rid
        t0 = time.perf_counter()
        response = await call_next(request)
        response.headers["x-request-id"] = rid
        path = request.url.path
        if path not in ("/metrics", "/health", "/ready"):
            metrics.requests.labels(path, str(response.status_code)).inc()
            log.info("request", extra={"request_id": rid, "method": request.method, "path": path,
                                       "status": response.status_code,
                                       "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
                                       "key_id": getattr(request.state, "key_id", None)})
        return response

    # -- auth ----------------------------------------------------------------------------
    def require(scope: str) -> Any:
        async def dep(request: Request) -> KeyInfo | None:
            if keys is None:
                return None
            header = request.headers.get("authorization", "")
            secret = header[7:].strip() if header.lower().startswith("bearer ") else None
            key = await asyncio.to_thread(keys.verify, secret)
            request.state.key_id = key.id
            if scope not in key.scopes and "admin" not in key.scopes:
                raise PermissionDeniedError(f"API key {key.id} lacks the {scope!r} scope",
                                            f"create a key with --scopes {scope}")
            return key

        assert scope in SCOPES
        return Depends(dep)

    def check_model(name: str) -> None:
        if name != config.model_name and name not in config.model_aliases:
            raise NotFoundError(f"model {name!r} is not served here", f"use model {config.model_name!r} (GET /v1/models)",
                                param="model")

    def params_from(req: Any, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None,
                    seed_offset: int) -> SamplingParams:
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return SamplingParams(
            max_tokens=max_tokens, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
            repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            seed=None if req.seed is None else req.seed + seed_offset, stop=stop,
            stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, timeout=req.timeout or config.request_timeout)

    async def submit(request: Request, key: KeyInfo | None, prompts: list[list[int]], make: Any,
                     n: int) -> tuple[_Handle, list[float] | None]:
        if state["draining"]:
            raise OverloadedError("the server is shutting down", "retry against another replica")
        handle = _Handle(asyncio.get_running_loop())
        seqs: list[Sequence] = []
        rid = request.state.request_id
        for pi, ids in enumerate(prompts):
            for j in range(n):
                seq = engine.make_sequence(ids, make(j), f"{rid}-{pi}-{j}")
                seq.user_data = handle.notify
                seqs.append(seq)
        entry = None
        if key is not None:
            est = sum(len(s.token_ids) + s.params.max_tokens for s in seqs)
            entry = limiter.admit(key, est)
        handle.seqs = seqs
        try:
            for s in seqs:
                thread.submit(s)
        except OverloadedError:
            for s in seqs:
                thread.abort(s)
            if entry is not None:
                limiter.settle(entry, 0)
            raise
        return handle, entry

    async def wait_all(request: Request, handle: _Handle) -> None:
        """Wait until every sequence finished; abort them if the client disconnects."""
        try:
            while not handle.done:
                try:
                    await asyncio.wait_for(handle.queue.get(), timeout=0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            for s in handle.seqs:
                if not s.is_finished:
                    thread.abort(s)
            raise

    def finish(request: Request, key: KeyInfo | None, entry: list[float] | None, handle: _Handle, endpoint: str,
               status: int, t0: float) -> tuple[int, int]:
        tin = sum(s.num_prompt_tokens for s in handle.seqs)
        tout = sum(s.num_output_tokens for s in handle.seqs)
        metrics.tokens_in.inc(tin)
        metrics.tokens_out.inc(tout)
        metrics.latency.observe(time.perf_counter() - t0)
        for s in handle.seqs:
            if s.ttft is not None:
                metrics.ttft.observe(s.ttft)
                if s.num_output_tokens > 1 and s.finish_time is not None and s.first_token_time is not None:
                    metrics.tpot.observe((s.finish_time - s.first_token_time) / (s.num_output_tokens - 1))
        if entry is not None:
            limiter.settle(entry, tin + tout)
        if keys is not None:
            keys.record_usage(key.id if key else None, request.state.request_id, config.model_name, endpoint, tin,
                              tout, (time.perf_counter() - t0) * 1000, status)
        return tin, tout

    def raise_failed(handle: _Handle) -> None:
        for s in handle.seqs:
            if s.finish_reason == "error":
                raise LlmpressError(f"the engine failed on this request ({s.error})", "retry; report it if it persists")
            if s.finish_reason == "timeout":
                e = LlmpressError(f"the request timed out after {s.params.timeout} s",
                                  "raise `timeout` or lower max_tokens")
                e.http_status = 504
                e.error_type = "timeout_error"
                raise e

    async def complete(request: Request, key: KeyInfo | None, entry: list[float] | None, handle: _Handle,
                       endpoint: str, t0: float) -> tuple[int, int]:
        """Wait for a non-streaming request, then record it (usage, metrics, limits) as success or error."""
        try:
            await wait_all(request, handle)
            raise_failed(handle)
        except LlmpressError as e:
            finish(request, key, entry, handle, endpoint, e.http_status, t0)
            raise
        return finish(request, key, entry, handle, endpoint, 200, t0)

    def tok_str(i: int) -> str:
        return tok.decode([i])

    def encode_prompt(prompt: Any) -> list[list[int]]:
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

    def default_max_tokens(n_prompt: int) -> int:
        return max(1, min(256, engine.max_model_len - n_prompt))

    # -- endpoints -------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        if state["draining"] or not thread.alive:
            return error_json(503, "not ready: " + ("draining" if state["draining"] else "engine not running"),
                              "overloaded_error")
        return JSONResponse({"status": "ready", "waiting": engine.num_waiting, "running": engine.num_running})

    @app.get("/metrics")
    async def prom() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList)
    async def models(key: KeyInfo | None = require("models")) -> ModelList:
        return ModelList(data=[ModelCard(id=config.model_name, created=config.created, root=config.model_name,
                                         parent=config.parent)])

    @app.post("/v1/completions", response_model=CompletionResponse)
    async def completions(req: CompletionRequest, request: Request,
                          key: KeyInfo | None = require("completions")) -> Any:
        t0 = time.perf_counter()
        check_model(req.model)
        prompts = encode_prompt(req.prompt)
        lp = req.logprobs
        echo_lp = lp if (req.echo and lp is not None) else None
        mt = req.max_tokens if req.max_tokens is not None else 16
        handle, entry = await submit(request, key, prompts,
                                     lambda j: params_from(req, mt, lp, echo_lp, j), req.n)
        cid = f"cmpl-{request.state.request_id}"
        if req.stream:
            return StreamingResponse(stream_completion(request, key, entry, handle, req, cid, t0),
                                     media_type="text/event-stream")
        _, tout = await complete(request, key, entry, handle, "completions", t0)
        n_prompt = sum(len(p) for p in prompts)
        choices = []
        for i, s in enumerate(handle.seqs):
            text = engine.text_of(s)
            prompt_text = tok.decode(s.token_ids[:s.num_prompt_tokens]) if req.echo else ""
            logprobs = completion_logprobs(s, req.echo, prompt_text) if lp is not None else None
            choices.append(CompletionChoice(index=i, text=prompt_text + text, logprobs=logprobs,
                                            finish_reason=s.finish_reason))
        return CompletionResponse(id=cid, created=int(time.time()), model=config.model_name, choices=choices,
                                  usage=Usage(prompt_tokens=n_prompt, completion_tokens=tout,
                                              total_tokens=n_prompt + tout))

    def completion_logprobs(s: Sequence, echo: bool, prompt_text: str) -> CompletionLogprobs:
        toks: list[str] = []
        tlp: list[float | None] = []
        top: list[dict[str, float] | None] = []
        offs: list[int] = []
        pos = 0
        entries: list[tuple[int, dict[str, Any] | None]] = []
        if echo:
            pids = s.token_ids[:s.num_prompt_tokens]
            plps = s.prompt_logprobs + [None] * (len(pids) - len(s.prompt_logprobs))
            entries += list(zip(pids, plps, strict=True))
        entries += list(zip(s.output_ids, s.logprobs + [None] * (s.num_output_tokens - len(s.logprobs)), strict=True))
        for tid, e in entries:
            t = tok_str(tid)
            toks.append(t)
            offs.append(pos)
            pos += len(t)
            tlp.append(None if e is None else e["logprob"])
            top.append(None if e is None else {tok_str(k): v for k, v in e["top"].items()})
        return CompletionLogprobs(tokens=toks, token_logprobs=tlp, top_logprobs=top, text_offset=offs)

    async def stream_deltas(request: Request, handle: _Handle) -> AsyncIterator[tuple[int, str, str | None, Sequence]]:
        """Yield (choice index, new text, finish reason or None, seq) as the engine produces tokens."""
        sent = [0] * len(handle.seqs)
        index = {id(s): i for i, s in enumerate(handle.seqs)}
        hold = max([len(x) for s in handle.seqs for x in s.params.stop] + [1]) - 1
        closed: set[int] = set()
        try:
            while len(closed) < len(handle.seqs):
                try:
                    seq = await asyncio.wait_for(handle.queue.get(), timeout=0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        raise asyncio.CancelledError from None
                    continue
                i = index[id(seq)]
                if i in closed:
                    continue
                text = engine.text_of(seq)
                fin = seq.is_finished
                upto = len(text) if fin else max(sent[i], len(text) - hold)
                if not fin and text.endswith("\ufffd"):
                    upto = min(upto, len(text) - 1)
                delta = text[sent[i]:upto] if upto > sent[i] else ""
                sent[i] = max(sent[i], upto)
                if fin:
                    closed.add(i)
                if delta or fin:
                    yield i, delta, seq.finish_reason if fin else None, seq
        except (asyncio.CancelledError, GeneratorExit):
            for s in handle.seqs:
                if not s.is_finished:
                    thread.abort(s)
            raise

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def stream_completion(request: Request, key: KeyInfo | None, entry: list[float] | None, handle: _Handle,
                                req: CompletionRequest, cid: str, t0: float) -> AsyncIterator[str]:
        created = int(time.time())
        status = 200
        try:
            if req.echo:
                for i, s in enumerate(handle.seqs):
                    yield sse({"id": cid, "object": "text_completion", "created": created, "model": config.model_name,
                               "choices": [{"index": i, "text": tok.decode(s.token_ids[:s.num_prompt_tokens]),
                                            "logprobs": None, "finish_reason": None}]})
            async for i, delta, fin, seq in stream_deltas(request, handle):
                if fin in ("error", "timeout"):
                    status = 500 if fin == "error" else 504
                    yield sse({"error": {"message": seq.error or f"request {fin}", "type": "server_error",
                                         "param": None, "code": fin}})
                    continue
                yield sse({"id": cid, "object": "text_completion", "created": created, "model": config.model_name,
                           "choices": [{"index": i, "text": delta, "logprobs": None, "finish_reason": fin}]})
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            finish(request, key, entry, handle, "completions", status, t0)

    def chat_prompt(req: ChatCompletionRequest) -> list[int]:
        msgs = []
        for m in req.messages:
            content = m.content
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if p.get("type", "text") == "text")
            msgs.append({"role": m.role, "content": content or ""})
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            return tok.encode(text, add_special_tokens=False)
        # no template: a plain transcript, so base models can still be chatted with
        text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"
        return tok.encode(text)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat(req: ChatCompletionRequest, request: Request, key: KeyInfo | None = require("chat")) -> Any:
        t0 = time.perf_counter()
        check_model(req.model)
        ids = chat_prompt(req)
        mt = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if mt is None:
            mt = default_max_tokens(len(ids))
        lp = (req.top_logprobs or 0) if req.logprobs else None
        handle, entry = await submit(request, key, [ids], lambda j: params_from(req, mt, lp, None, j), req.n)
        cid = f"chatcmpl-{request.state.request_id}"
        if req.stream:
            return StreamingResponse(stream_chat(request, key, entry, handle, cid, t0), media_type="text/event-stream")
        _, tout = await complete(request, key, entry, handle, "chat", t0)
        choices = []
        for i, s in enumerate(handle.seqs):
            logprobs = None
            if lp is not None:
                logprobs = {"content": [{"token": tok_str(e["token"]), "logprob": e["logprob"], "bytes": None,
                                         "top_logprobs": [{"token": tok_str(k), "logprob": v, "bytes": None}
                                                          for k, v in e["top"].items()]} for e in s.logprobs]}
            choices.append(ChatChoice(index=i, message=ChatResponseMessage(content=engine.text_of(s)),
                                      logprobs=logprobs, finish_reason=s.finish_reason))
        n_prompt = len(ids)
        return ChatCompletionResponse(id=cid, created=int(time.time()), model=config.model_name, choices=choices,
                                      usage=Usage(prompt_tokens=n_prompt, completion_tokens=tout,
                                                  total_tokens=n_prompt + tout))

    async def stream_chat(request: Request, key: KeyInfo | None, entry: list[float] | None, handle: _Handle,
                          cid: str, t0: float) -> AsyncIterator[str]:
        created = int(time.time())
        status = 200
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": config.model_name}
        try:
            for i in range(len(handle.seqs)):
                yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None}]})
            async for i, delta, fin, seq in stream_deltas(request, handle):
                if fin in ("error", "timeout"):
                    status = 500 if fin == "error" else 504
                    yield sse({"error": {"message": seq.error or f"request {fin}", "type": "server_error",
                                         "param": None, "code": fin}})
                    continue
                yield sse({**base, "choices": [{"index": i, "delta": {"content": delta} if delta else {},
                                                "finish_reason": fin}]})
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            finish(request, key, entry, handle, "chat", status, t0)

    @app.post("/generate", response_model=GenerateResponse)
    async def generate(req: GenerateRequest, request: Request, key: KeyInfo | None = require("completions")) -> Any:
        """The seeds' contract: `max_length` counts new tokens."""
        t0 = time.perf_counter()
        ids = encode_prompt(req.prompt)

        def make(j: int) -> SamplingParams:
            return SamplingParams(max_tokens=req.max_length, temperature=req.temperature,
                                  timeout=config.request_timeout)

        handle, entry = await submit(request, key, ids, make, 1)
        await complete(request, key, entry, handle, "generate", t0)
        return GenerateResponse(generated_text=engine.text_of(handle.seqs[0]))

    @app.middleware("http")
    async def _count_inflight(request: Request, call_next: Any) -> Response:
        state["inflight"] += 1
        try:
            return await call_next(request)
        finally:
            state["inflight"] -= 1

    return app
