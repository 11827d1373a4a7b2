"""Full fine-tuning: every parameter trains (most memory: weights + grads + two Adam moments)."""

from __future__ import annotations

from typing import Any

from llmpress.tune.config import FullConfig

Config = FullConfig


def prepare(model: Any, cfg: FullConfig, tokenizer_path: str) -> Any:
    """Unfreeze everything; the model itself is the trainable object."""
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model
