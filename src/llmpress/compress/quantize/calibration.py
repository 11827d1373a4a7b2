"""Calibration text -> token batches, and forward hooks that stream layer inputs to a callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from llmpress.errors import ConfigError, DataError


def calibration_batches(tokenizer: Any, spec: str, samples: int, seq_len: int) -> torch.Tensor:
    """`samples` non-overlapping windows of `seq_len` tokens from the corpus' calibration split."""
    from llmpress.data import load_corpus
    from llmpress.data.windows import training_blocks

    if samples < 1 or seq_len < 8:
        raise ConfigError(f"calibration needs samples >= 1 and seq_len >= 8 (got {samples}, {seq_len})",
                          "pass --samples 32 or more")
    texts = load_corpus(spec).split("calibration")
    try:
        blocks = training_blocks(texts, tokenizer, seq_len, max_blocks=samples)
    except DataError:
        blocks = []
    if len(blocks) < samples:
        raise DataError(f"calibration corpus {spec!r} has only {len(blocks)} windows of {seq_len} tokens, "
                        f"fewer than the {samples} samples asked for",
                        "use a larger corpus or fewer --samples")
    return torch.tensor(blocks, dtype=torch.long)


def run_with_hooks(model: nn.Module, batches: torch.Tensor, modules: dict[str, nn.Module],
                   fn: Callable[[str, torch.Tensor], None], progress: Any = None, batch: int = 4,
                   what: str = "calibrate") -> None:
    """Forward the batches through the decoder (no head) calling fn(name, input_2d) per module."""
    handles = []
    for name, mod in modules.items():
        def hook(_m: nn.Module, args: tuple[Any, ...], _name: str = name) -> None:
            x = args[0]
            fn(_name, x.detach().reshape(-1, x.shape[-1]).float())

        handles.append(mod.register_forward_pre_hook(hook))
    body = model.get_decoder() if hasattr(model, "get_decoder") else model
    task = progress.add_task(what, total=len(batches)) if progress is not None else None
    try:
        with torch.no_grad():
            for i in range(0, len(batches), batch):
                body(input_ids=batches[i : i + batch], use_cache=False)
                if task is not None:
                    progress.update(task, advance=min(batch, len(batches) - i))
    finally:
        for h in handles:
            h.remove()
