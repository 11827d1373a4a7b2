"""OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions (JSON or SSE)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from llmpress.engine import SamplingParams
from llmpress.server.auth import require
from llmpress.server.context import ServerContext, StreamEnd, status_of
from llmpress.server.errors import error_responses
from llmpress.server.schemas import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatResponseMessage,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Usage,
)
from llmpress.server.streaming import Choice, RequestHandle, sse, stream_error_event

_POST_ERRORS = error_responses(400, 401, 403, 404, 422, 429, 500, 503, 504)
_STREAM = {"text/event-stream": {"schema": {"type": "string",
                                            "description": "server-sent events when `stream` is true"}}}


def router(ctx: ServerContext) -> APIRouter:
    r = APIRouter()
    tok = ctx.tokenizer
    cfg = ctx.config

    def params_from(req: Any, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None,
                    seed_offset: int) -> SamplingParams:
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return SamplingParams(
            max_tokens=max_tokens, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
            repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            seed=None if req.seed is None else req.seed + seed_offset, stop=stop,
            stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, timeout=req.timeout or cfg.request_timeout)

    def tok_str(i: int) -> str:
        return tok.decode([i])

    def usage(handle: RequestHandle) -> Usage:
        tin, tout = handle.tokens_in, handle.tokens_out
        return Usage(prompt_tokens=tin, completion_tokens=tout, total_tokens=tin + tout)

    def include_usage(req: Any) -> bool:
        return bool(req.stream_options and req.stream_options.get("include_usage"))

    async def deltas(request: Request, handle: RequestHandle) -> AsyncIterator[tuple[int, str, Choice]]:
        """(choice index, new text, the choice) as outputs arrive, until every choice finished."""
        while not handle.done:
            out = await handle.next(request)
            i = handle.apply(out)
            if out.text or out.finished:
                yield i, out.text, handle.choices[i]

    async def sse_stream(request: Request, handle: RequestHandle, end: StreamEnd, req: Any, base: dict[str, Any],
                         opening: list[dict[str, Any]], choice: Any) -> AsyncIterator[str]:
        """One SSE body for both endpoints: opening events, one chunk per delta (`choice(i, delta, c)`),
        a clean error event for a failed choice, the usage chunk if asked, then [DONE] after settling."""
        try:
            for ev in opening:
                yield sse({**base, "choices": [ev]})
            status = 200
            async for i, delta, c in deltas(request, handle):
                if c.finish_reason in ("error", "timeout"):
                    status = 504 if c.finish_reason == "timeout" else 500
                    yield stream_error_event(c)
                    continue
                yield sse({**base, "choices": [choice(i, delta, c)]})
            if include_usage(req):
                yield sse({**base, "choices": [], "usage": usage(handle).model_dump()})
            end(status)
            yield "data: [DONE]\n\n"
        except BaseException as e:
            end.status = status_of(e)
            raise

    @r.get("/v1/models", response_model=ModelList, responses=error_responses(401, 403))
    async def models(key: Any = require(ctx.keys, "models")) -> ModelList:
        return ModelList(data=[ModelCard(id=cfg.model_name, created=cfg.created, root=cfg.model_name,
                                         parent=cfg.parent)])

    # -- completions -----------------------------------------------------------------------
    def completion_logprobs(c: Choice, echo: bool) -> CompletionLogprobs:
        toks: list[str] = []
        tlp: list[float | None] = []
        top: list[dict[str, float] | None] = []
        offs: list[int] = []
        pos = 0
        entries: list[tuple[int, dict[str, Any] | None]] = []
        if echo:
            plps = c.prompt_logprobs + [None] * (len(c.prompt_ids) - len(c.prompt_logprobs))
            entries += list(zip(c.prompt_ids, plps, strict=True))
        entries += list(zip(c.token_ids, c.logprobs + [None] * (len(c.token_ids) - len(c.logprobs)), strict=True))
        for tid, e in entries:
            t = tok_str(tid)
            toks.append(t)
            offs.append(pos)
            pos += len(t)
            tlp.append(None if e is None else e["logprob"])
            top.append(None if e is None else {tok_str(k): v for k, v in e["top"].items()})
        return CompletionLogprobs(tokens=toks, token_logprobs=tlp, top_logprobs=top, text_offset=offs)

    @r.post("/v1/completions", response_model=CompletionResponse,
            responses={**_POST_ERRORS, 200: {"content": _STREAM}})
    async def completions(req: CompletionRequest, request: Request,
                          key: Any = require(ctx.keys, "completions")) -> Any:
        ctx.check_model(req.model)
        prompts = ctx.encode_prompt(req.prompt)
        lp = req.logprobs
        echo_lp = lp if (req.echo and lp is not None) else None
        mt = req.max_tokens if req.max_tokens is not None else 16
        cid = f"cmpl-{request.state.request_id}"
        created = int(time.time())

        def respond(handle: RequestHandle) -> CompletionResponse:
            choices = []
            for i, c in enumerate(handle.choices):
                prompt_text = tok.decode(c.prompt_ids) if req.echo else ""
                logprobs = completion_logprobs(c, req.echo) if lp is not None else None
                choices.append(CompletionChoice(index=i, text=prompt_text + c.text, logprobs=logprobs,
                                                finish_reason=c.finish_reason))
            return CompletionResponse(id=cid, created=created, model=cfg.model_name, choices=choices,
                                      usage=usage(handle))

        def stream(request: Request, handle: RequestHandle, end: StreamEnd) -> AsyncIterator[str]:
            base = {"id": cid, "object": "text_completion", "created": created, "model": cfg.model_name}
            opening = [{"index": i, "text": tok.decode(c.prompt_ids), "logprobs": None, "finish_reason": None}
                       for i, c in enumerate(handle.choices)] if req.echo else []
            return sse_stream(request, handle, end, req, base, opening, lambda i, delta, c: {
                "index": i, "text": delta, "logprobs": None, "finish_reason": c.finish_reason})

        return await ctx.serve(request, key, "completions", prompts,
                         lambda j: params_from(req, mt, lp, echo_lp, j), req.n,
                         stream if req.stream else None, respond)

    # -- chat ---------------------------------------------------------------------------------
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

    @r.post("/v1/chat/completions", response_model=ChatCompletionResponse,
            responses={**_POST_ERRORS, 200: {"content": _STREAM}})
    async def chat(req: ChatCompletionRequest, request: Request, key: Any = require(ctx.keys, "chat")) -> Any:
        ctx.check_model(req.model)
        ids = chat_prompt(req)
        mt = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if mt is None:
            mt = max(1, min(256, ctx.engine.max_model_len - len(ids)))
        lp = (req.top_logprobs or 0) if req.logprobs else None
        cid = f"chatcmpl-{request.state.request_id}"
        created = int(time.time())

        def respond(handle: RequestHandle) -> ChatCompletionResponse:
            choices = []
            for i, c in enumerate(handle.choices):
                logprobs = None
                if lp is not None:
                    logprobs = {"content": [
                        {"token": tok_str(e["token"]), "logprob": e["logprob"], "bytes": None,
                         "top_logprobs": [{"token": tok_str(k), "logprob": v, "bytes": None}
                                          for k, v in e["top"].items()]} for e in c.logprobs]}
                choices.append(ChatChoice(index=i, message=ChatResponseMessage(content=c.text), logprobs=logprobs,
                                          finish_reason=c.finish_reason))
            return ChatCompletionResponse(id=cid, created=created, model=cfg.model_name, choices=choices,
                                          usage=usage(handle))

        def stream(request: Request, handle: RequestHandle, end: StreamEnd) -> AsyncIterator[str]:
            base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": cfg.model_name}
            opening = [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                       for i in range(len(handle.choices))]
            return sse_stream(request, handle, end, req, base, opening, lambda i, delta, c: {
                "index": i, "delta": {"content": delta} if delta else {}, "finish_reason": c.finish_reason})

        return await ctx.serve(request, key, "chat", [ids], lambda j: params_from(req, mt, lp, None, j), req.n,
                         stream if req.stream else None, respond)

    return r
