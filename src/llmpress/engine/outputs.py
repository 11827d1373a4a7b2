"""What the engine publishes: one immutable `StepOutput` per sequence touched by a step.

The engine thread owns every `Sequence`; other threads (the server's event loop) only ever see these
frozen messages, so streaming needs no shared mutable state: a choice's text is the concatenation of
its outputs' `text`, its tokens the concatenation of their `token_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepOutput:
    """One sequence's progress in one step: new tokens, the new text they finalised, finish reason.

    `text` is already cut at a stop string and never ends inside a multi-byte character or a possible
    stop-string prefix (that text is held back until it is safe or the sequence ends). Logprob entries
    are fresh dicts the engine never touches again.
    """

    seq_id: int
    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None
    error: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    logprobs: tuple[dict[str, Any], ...] = ()
    prompt_logprobs: tuple[dict[str, Any] | None, ...] = ()
    ttft: float | None = None
    latency: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """What a finished request produced (offline API)."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    ttft: float | None
    latency: float | None
    logprobs: list[dict[str, Any]]
    prompt_logprobs: list[dict[str, Any] | None]
    num_cached_tokens: int
