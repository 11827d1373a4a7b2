"""One error shape for every failure: OpenAI's `{"error": {"message", "type", "param", "code"}}`.

`LlmpressError` subclasses carry their HTTP status and type; request validation becomes 400 (body
not JSON / not an object) or 422 naming the field (unknown fields included); anything unexpected is
a 500 `server_error` with the traceback in the log, never in the response.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmpress.errors import LlmpressError, OverloadedError, RateLimitError
from llmpress.server.schemas import ErrorResponse
from llmpress.server.streaming import ClientGone

log = logging.getLogger("llmpress.server")

_DESCRIPTIONS = {
    400: "Malformed request: the body is not JSON or not a JSON object, an empty prompt, a bad x-request-id",
    401: "Missing, unknown, revoked or expired API key",
    403: "The API key lacks the scope this endpoint needs",
    404: "Unknown model (see GET /v1/models)",
    422: "A field with a bad value, or a field this endpoint does not accept (named in `param`)",
    429: "Rate limit or token budget exceeded (Retry-After header; code insufficient_quota for budgets)",
    500: "The engine failed on this request (type server_error)",
    503: "Queue full, shutting down, or the engine is unhealthy (Retry-After header)",
    504: "The request exceeded its timeout",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these statuses, each with the error schema (the contract we return)."""
    return {c: {"model": ErrorResponse, "description": _DESCRIPTIONS[c]} for c in codes}


def error_json(status: int, message: str, etype: str, param: str | None = None, code: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": etype, "param": param, "code": code}},
                        status_code=status, headers=headers)


def llmpress_error_response(e: LlmpressError) -> JSONResponse:
    headers = None
    if isinstance(e, RateLimitError):
        headers = {"Retry-After": str(max(1, int(e.retry_after + 0.999)))}
    elif isinstance(e, OverloadedError):
        headers = {"Retry-After": "2"}
    return error_json(e.http_status, e.one_line(), e.error_type, e.param, getattr(e, "code", None), headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LlmpressError)
    async def _llmpress_error(request: Request, e: LlmpressError) -> JSONResponse:
        return llmpress_error_response(e)

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
        unknown = [".".join(str(x) for x in err.get("loc", ()) if x != "body") for err in errs
                   if err.get("type") == "extra_forbidden"]
        if unknown:
            return error_json(422, f"unknown field(s): {', '.join(unknown)} — remove them; the endpoint's fields "
                                   "are listed in /openapi.json", "invalid_request_error", unknown[0],
                              "unknown_field")
        param = ".".join(loc) or None
        msg = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid request"))
        return error_json(422, msg, "invalid_request_error", param, first.get("type"))

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, e: ClientGone) -> JSONResponse:
        return error_json(499, str(e), "client_closed_request")  # nobody reads it; keeps the log quiet

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        etype = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_json(e.status_code, str(e.detail), etype)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": getattr(request.state, "request_id", None)})
        return error_json(500, f"internal error: {e.__class__.__name__}", "server_error")
