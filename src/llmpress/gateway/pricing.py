"""Pricing before and after a call: token counting, the pre-call cost estimate, and in-flight money
reservations against a key's budget (reserve the worst case at admission, settle to the real cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llmpress.errors import LlmpressError
from llmpress.gateway.config import TargetConfig
from llmpress.registry.cost import NANO, cost_nusd

CHARS_PER_TOKEN = 4  # the stated approximation where llmpress has no tokenizer for a target


class BudgetExceededError(LlmpressError):
    """The request's worst-case cost exceeds what is left of the key's money budget."""

    http_status = 402
    error_type = "insufficient_quota"


class TokenCounter:
    """Counts tokens with the target's tokenizer when its config names one llmpress can load
    (`tokenizer: builtin:NAME`, an artifact id or an HF directory), else ceil(chars / 4)."""

    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self._tok: Any = None
        if spec:
            from transformers import AutoTokenizer

            from llmpress.sources import resolve

            art = resolve(spec)
            self._tok = AutoTokenizer.from_pretrained(str(art.path))

    @property
    def method(self) -> str:
        return f"tokenizer:{self.spec}" if self._tok is not None else f"approx:chars/{CHARS_PER_TOKEN}"

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._tok is not None:
            return len(self._tok.encode(text, add_special_tokens=False))
        return math.ceil(len(text) / CHARS_PER_TOKEN)


def chat_overhead(body: dict[str, Any]) -> int:
    """Template tokens around chat messages (role markers): a small per-message allowance."""
    return 4 * len(body.get("messages") or []) + 2 if "messages" in body else 0


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    for k in ("max_completion_tokens", "max_tokens"):
        v = body.get(k)
        if isinstance(v, int) and v >= 0:
            return v
    return 16 if "prompt" in body else None  # OpenAI's completions default; chat has none


def worst_case_nusd(target: TargetConfig, prompt_tokens: int, max_tokens: int) -> int:
    """The most this request can cost at `target`: every prompt token plus max_tokens of output."""
    return cost_nusd(prompt_tokens, max_tokens, target.price.input_per_mtok, target.price.output_per_mtok)


def usd(nusd: int) -> float:
    return nusd / NANO


@dataclass
class Reservations:
    """Money reserved by requests in flight, per client key (owned by the event loop)."""

    by_key: dict[str, int] = field(default_factory=dict)

    def reserved(self, key_id: str) -> int:
        return self.by_key.get(key_id, 0)

    def admit(self, key_id: str, budget_nusd: int | None, spent_nusd: int, need_nusd: int) -> int:
        """Reserve `need_nusd` or raise BudgetExceededError; returns the amount reserved."""
        if budget_nusd is None:
            return 0
        left = budget_nusd - spent_nusd - self.reserved(key_id)
        if need_nusd > left:
            raise BudgetExceededError(
                f"this request may cost up to ${usd(need_nusd):.6f} but key {key_id} has ${usd(max(left, 0)):.6f} "
                f"left of its ${usd(budget_nusd):.2f} budget (${usd(spent_nusd):.6f} spent, "
                f"${usd(self.reserved(key_id)):.6f} held by requests in flight)",
                "lower max_tokens, wait for requests in flight, or raise the budget with `llmpress cost budget`")
        self.by_key[key_id] = self.reserved(key_id) + need_nusd
        return need_nusd

    def release(self, key_id: str, amount: int) -> None:
        if amount:
            left = self.reserved(key_id) - amount
            if left > 0:
                self.by_key[key_id] = left
            else:
                self.by_key.pop(key_id, None)
