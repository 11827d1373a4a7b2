"""`POST /v1/feedback`: a rating and/or label on a response, stored against the A/B arm that served it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from llmpress.server.auth import require
from llmpress.server.context import ServerContext
from llmpress.server.errors import error_responses
from llmpress.server.schemas import ErrorResponse

_ERRORS = {**error_responses(400, 401, 403, 422),
           404: {"model": ErrorResponse, "description": "No A/B response with this id"},
           410: {"model": ErrorResponse, "description": "The response's A/B test stopped, or it is too old"}}


def strip_prefix(response_id: str) -> str:
    """A completion id (`cmpl-<request id>`, `chatcmpl-<request id>`) or the bare request id -> request id."""
    for p in ("chatcmpl-", "cmpl-"):
        if response_id.startswith(p):
            return response_id[len(p):]
    return response_id


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=80, description="the response id (x-llmpress-response-id, "
                                                                   "or the completion's cmpl-/chatcmpl- id)")
    rating: float | None = Field(None, description="0/1 (thumbs) or a score, e.g. 1-5")
    label: str | None = Field(None, max_length=255)
    comment: str | None = Field(None, max_length=4000)


class FeedbackResponse(BaseModel):
    id: str
    ab_test: str
    arm: str
    recorded: bool = True


def router(ctx: ServerContext, on_feedback: Callable[[str, str, float | None], Any] | None = None) -> APIRouter:
    r = APIRouter()

    @r.post("/v1/feedback", response_model=FeedbackResponse, responses=_ERRORS)
    async def feedback(req: FeedbackRequest, key: Any = require(ctx.keys, "completions")) -> FeedbackResponse:
        from llmpress.ops.ab import record_feedback

        rid = strip_prefix(req.id)
        got = await asyncio.to_thread(record_feedback, rid, req.rating, req.label, req.comment or "")
        if on_feedback is not None:
            on_feedback(got["test"], got["arm"], req.rating)
        return FeedbackResponse(id=rid, ab_test=got["test"], arm=got["arm"])

    return r
