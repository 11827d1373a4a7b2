"""Unstructured L1-magnitude pruning of the decoder's Linear weights, per layer or global.

Uses torch.nn.utils.prune (l1_unstructured / global_unstructured) and then makes the masks
permanent. Embeddings and the LM head are left dense (they are shared/tied and the usual
practice). The trap the seeds point out is reported, not hidden: zeroed weights are still
stored, so the parameter count and the dense file size do not change; only the nonzero
count does. Without a sparse kernel there is no speedup either.
"""

from __future__ import annotations

from typing import Any

from llmpress.compress.decoder import decoder_layers


def prunable_linears(model: Any) -> list[tuple[str, Any]]:
    """(name, nn.Linear) of every Linear inside the decoder layers."""
    import torch

    out = []
    for i, layer in enumerate(decoder_layers(model)):
        for name, mod in layer.named_modules():
            if isinstance(mod, torch.nn.Linear):
                out.append((f"model.layers.{i}.{name}", mod))
    return out


def count_params(model: Any) -> dict[str, int]:
    """Total and nonzero parameters, the honest sparsity numbers (the evaluation's own count)."""
    from llmpress.modelstats import count_parameters

    c = count_parameters(model)
    return {"params_total": c["params"], "params_nonzero": c["nonzero_params"]}


def run(model: Any, amount: float, scope: str = "layer") -> tuple[Any, dict[str, Any]]:
    """Zero the `amount` smallest-|w| weights of each Linear (scope layer) or of all together (global)."""
    import torch.nn.utils.prune as tprune

    before = count_params(model)
    linears = prunable_linears(model)
    if scope == "global":
        tprune.global_unstructured([(m, "weight") for _, m in linears], pruning_method=tprune.L1Unstructured,
                                   amount=amount)
    else:
        for _, m in linears:
            tprune.l1_unstructured(m, "weight", amount=amount)
    for _, m in linears:
        tprune.remove(m, "weight")
    after = count_params(model)
    lin_total = sum(m.weight.numel() for _, m in linears)
    lin_zero = sum(int((m.weight == 0).sum()) for _, m in linears)
    elem = linears[0][1].weight.element_size() if linears else 4
    return model, {
        # What a bitmask + packed-nonzeros format would need for these weights (not written: dense
        # safetensors is what every loader reads; the estimate shows whether such a format would pay).
        "decoder_linears_bytes_dense": lin_total * elem,
        "decoder_linears_bytes_bitmask_estimate": (lin_total - lin_zero) * elem + (lin_total + 7) // 8,
        "sparsity_decoder_linears": round(lin_zero / max(lin_total, 1), 4),
        "scope": scope,
        "amount": amount,
        **after,
        "params_total_before": before["params_total"],
        "sparsity_overall": round(1 - after["params_nonzero"] / after["params_total"], 4),
        "trap": "parameter count and dense file size did not change: zeros are stored; "
                "no sparse kernel is used, so there is no speedup either",
    }
