"""Layer pruning: drop whole decoder layers, the ones that change the hidden state least.

Importance of layer i is ShortGPT's block influence, 1 − cos(h_in, h_out) averaged over the
calibration tokens: a layer whose output is nearly its input contributes little. The new
model is built from a config with fewer `num_hidden_layers` and the kept layers renumbered,
so it reloads with plain `from_pretrained` and its KV cache indices stay contiguous.
"""

from __future__ import annotations

from typing import Any

from llmpress.compress.decoder import decoder_layers, keep_layers
from llmpress.errors import ConfigError


def block_influence(model: Any, batches: Any, progress: Any = None) -> list[float]:
    """1 − mean cosine(input, output) of every decoder layer over the calibration windows."""
    import torch

    layers = decoder_layers(model)
    acc = [0.0] * len(layers)
    count = [0] * len(layers)
    handles = []

    def hook(i: int) -> Any:
        def fn(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            acc[i] += float((1 - cos).sum())
            count[i] += cos.numel()
        return fn

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(hook(i), with_kwargs=True))
    task = progress.add_task("calibration (layer influence)", total=len(batches)) if progress is not None else None
    try:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b.unsqueeze(0) if b.dim() == 1 else b)
                if progress is not None:
                    progress.advance(task)
    finally:
        for h in handles:
            h.remove()
    return [a / max(c, 1) for a, c in zip(acc, count, strict=True)]


def run(model: Any, drop: int, batches: Any, progress: Any = None) -> tuple[Any, dict[str, Any]]:
    """Drop the `drop` least influential layers. Returns the new model and a report."""
    n = len(decoder_layers(model))
    if drop >= n:
        raise ConfigError(f"cannot drop {drop} of {n} decoder layers", f"pass --layers between 1 and {n - 1}")
    scores = block_influence(model, batches, progress)
    order = sorted(range(n), key=lambda i: scores[i])
    dropped = sorted(order[:drop])
    kept = [i for i in range(n) if i not in dropped]
    return keep_layers(model, kept), {
        "layers_before": n, "layers_after": len(kept), "dropped_layers": dropped,
        "block_influence": [round(s, 5) for s in scores],
    }
