"""Calibration batches (fixed token windows from a corpus) and hooks that gather statistics on them."""

from __future__ import annotations

from typing import Any

from llmpress.errors import DataError


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


def load_calibration(tokenizer: Any, spec: str, n: int, seq_len: int) -> Any:
    """Windows from the calibration split of a corpus spec (`builtin:pydoc`, a .txt / .jsonl)."""
    from llmpress.data import load_corpus

    corpus = load_corpus(spec)
    texts = corpus.calibration + corpus.train  # calibration first; train tops it up if small
    return calibration_windows(tokenizer, texts, n, seq_len)


def decoder_layers(model: Any) -> Any:
    """The ModuleList of decoder layers of a Llama-like model (CausalLM or SequenceClassification)."""
    from llmpress.errors import SourceError

    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise SourceError(f"{type(model).__name__} has no model.layers",
                          "pruning supports Llama-style decoder models (Llama, Mistral, Qwen2, SmolLM)")
    return layers
