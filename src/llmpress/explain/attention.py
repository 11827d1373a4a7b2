"""Attention maps per layer and head, and attention rollout (Abnar & Zuidema 2020)."""

from __future__ import annotations

from typing import Any

from llmpress.errors import SourceError


def attention_maps(model: Any, input_ids: Any) -> Any:
    """Attention weights [layers, heads, T, T] of one prompt (eager attention; rows sum to 1)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=input_ids, output_attentions=True)
    att = getattr(out, "attentions", None)
    if not att or any(a is None for a in att):
        raise SourceError(f"{type(model).__name__} returned no attention weights",
                          "explain needs a model that runs with eager attention (Llama-style decoders do)")
    return torch.stack([a[0].float() for a in att])


def attention_rollout(maps: Any, residual: float = 0.5) -> Any:
    """How much each output position draws on each input token through all layers: per layer the head
    average mixed with the identity (the residual stream), rows renormalised, multiplied bottom-up."""
    import torch

    t = maps.shape[-1]
    eye = torch.eye(t)
    roll = eye.clone()
    for layer in maps:
        a = residual * eye + (1 - residual) * layer.mean(0)
        a = a / a.sum(-1, keepdim=True)
        roll = a @ roll
    return roll
