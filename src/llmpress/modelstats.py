"""Facts about a torch model that every stage reports: parameter counts (a leaf module).

One count for evaluation (`size`), pruning (sparsity), distillation (student / teacher ratio)
and tuning (trainable share), so the same model never gets two different numbers.
"""

from __future__ import annotations

from typing import Any


def count_parameters(model: Any, nonzero: bool = True) -> dict[str, int]:
    """Logical parameters, tied tensors once: {"params", "trainable_params", "nonzero_params"}.

    A packed quantized Linear (weights in buffers, no float `weight` parameter) counts
    in*out(+bias) from its shape, all of it nonzero and frozen. `nonzero=False` skips the
    nonzero scan (a pass over every weight) and reports nonzero_params = params.
    """
    import torch

    seen: set[int] = set()
    total = trainable = nz = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
        if nonzero:
            nz += int(torch.count_nonzero(p.detach()))
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.nn.Parameter) or not hasattr(m, "in_features") or not hasattr(m, "out_features"):
            continue
        if isinstance(m, torch.nn.Linear) and w is not None:
            continue
        n = int(m.in_features) * int(m.out_features)
        if getattr(m, "bias", None) is not None and not isinstance(m.bias, torch.nn.Parameter):
            n += int(m.out_features)
        total += n
        nz += n
    return {"params": total, "trainable_params": trainable, "nonzero_params": nz if nonzero else total}
