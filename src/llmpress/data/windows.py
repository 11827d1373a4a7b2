"""Tokenise texts into one stream and cut fixed windows with a stride (sliding-window evaluation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmpress.errors import ConfigError, DataError


@dataclass
class Window:
    """Token ids of one window; only positions >= `score_from` are scored (earlier ones are context)."""

    ids: list[int]
    score_from: int


def token_stream(texts: list[str], tokenizer: Any, max_tokens: int | None = None) -> list[int]:
    """All texts joined by EOS into one stream of token ids (BOS once at the start, if the model has one)."""
    sep = tokenizer.eos_token_id
    ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
        if max_tokens is not None and len(ids) >= max_tokens + 1:
            return ids[: max_tokens + 1]
    return ids


def sliding_windows(ids: list[int], window: int, stride: int) -> list[Window]:
    """Windows of `window` tokens starting every `stride`; each token is scored exactly once.

    Consecutive windows overlap by `window - stride` tokens (at least one), which serve only
    as context; token t (t >= 1) is scored in exactly one window, as in the standard
    strided-perplexity recipe.
    """
    if window < 2 or stride < 1 or stride > window:
        raise ConfigError(f"bad window/stride {window}/{stride}", "need window >= 2 and 1 <= stride <= window")
    if len(ids) < 2:
        raise DataError("the evaluation text tokenizes to fewer than 2 tokens", "use a larger corpus")
    out: list[Window] = []
    overlap = max(window - stride, 1)  # at least one token of context, so every window scores from >= 1
    scored_until = 1  # position 0 has no context and is never scored
    begin = 0
    while scored_until < len(ids):
        end = min(begin + window, len(ids))
        out.append(Window(ids[begin:end], score_from=scored_until - begin))
        scored_until = end
        if end == len(ids):
            break
        begin = end - overlap
    return out


def training_blocks(texts: list[str], tokenizer: Any, length: int, max_blocks: int | None = None) -> list[list[int]]:
    """Non-overlapping blocks of `length` tokens for training / calibration."""
    ids = token_stream(texts, tokenizer, None if max_blocks is None else max_blocks * length)
    blocks = [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]
    if not blocks:
        raise DataError(f"corpus has {len(ids)} tokens, fewer than one block of {length}", "use more text")
    return blocks[:max_blocks] if max_blocks else blocks


def calibration_windows(tokenizer: Any, texts: list[str], n: int, seq_len: int) -> Any:
    """Concatenate texts into one token stream and cut `n` windows of `seq_len`: a (n, seq_len) LongTensor.

    Fewer tokens than one window is a DataError; fewer than `n` windows uses what there is.
    """
    import torch

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError("the calibration data is empty", "pass --data with some text (e.g. builtin:pydoc)")
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= n * seq_len:
            break
    count = min(n, len(ids) // seq_len)
    if count < 1:
        raise DataError(f"the calibration data has {len(ids)} tokens, fewer than one window of {seq_len}",
                        "pass more text or a smaller --seq-len")
    return torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)
