"""Size: logical parameter count, nonzero parameters, bytes on disk."""

from __future__ import annotations

from typing import Any


def count_parameters(model: Any) -> dict[str, int]:
    """Logical parameters (a packed quantized Linear counts in*out(+bias)) and how many are nonzero.

    Quantized modules keep their weights in buffers, so modules that expose
    `in_features` / `out_features` but hold no float `weight` parameter are counted from
    their shape; their nonzero count is taken as that logical count.
    """
    import torch

    if hasattr(model, "count_parameters"):  # an exported model in its own runtime: counted at export
        return model.count_parameters()
    seen: set[int] = set()
    total = nonzero = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
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
        nonzero += n
    return {"params": total, "nonzero_params": nonzero}
