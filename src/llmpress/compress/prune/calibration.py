"""Calibration batches (fixed token windows from a corpus) and hooks that gather statistics on them."""

from __future__ import annotations

from typing import Any

from llmpress.compress.decoder import decoder_layers
from llmpress.data.windows import calibration_windows

__all__ = ["calibration_windows", "load_calibration", "decoder_layers"]


def load_calibration(tokenizer: Any, spec: str, n: int, seq_len: int) -> Any:
    """Windows from the calibration split of a corpus spec (`builtin:pydoc`, a .txt / .jsonl)."""
    from llmpress.data import load_corpus

    corpus = load_corpus(spec)
    texts = corpus.calibration + corpus.train  # calibration first; train tops it up if small
    return calibration_windows(tokenizer, texts, n, seq_len)
