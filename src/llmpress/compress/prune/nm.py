"""2:4 semi-structured pruning: in every group of 4 consecutive input weights keep the 2 largest.

The mask is what NVIDIA sparse tensor cores accelerate (torch.sparse.to_sparse_semi_structured
needs CUDA, compute capability ≥ 8.0). On CPU there is no such kernel: the artifact stores
dense weights with zeros, and we report the mask statistics and that no speedup applies.
"""

from __future__ import annotations

from typing import Any

from llmpress.compress.prune.unstructured import count_params, prunable_linears
from llmpress.errors import ConfigError


def mask_n_m(weight: Any, n: int = 2, m: int = 4) -> Any:
    """Boolean mask keeping the `n` largest |w| in each group of `m` along the input dimension."""
    import torch

    out_f, in_f = weight.shape
    if in_f % m:
        raise ConfigError(f"a weight with {in_f} inputs cannot be split into groups of {m}",
                          "2:4 pruning needs input sizes divisible by 4")
    groups = weight.detach().abs().reshape(out_f, in_f // m, m)
    idx = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(out_f, in_f)


def kernel_available() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8)


def run(model: Any, n: int = 2, m: int = 4) -> tuple[Any, dict[str, Any]]:
    """Apply n:m masks to every decoder Linear (weights zeroed in place)."""
    import torch

    with torch.no_grad():
        linears = prunable_linears(model)
        for _, mod in linears:
            mod.weight.mul_(mask_n_m(mod.weight, n, m))
    counts = count_params(model)
    kernel = kernel_available()
    lin_total = sum(m.weight.numel() for _, m in linears)
    lin_zero = sum(int((m.weight == 0).sum()) for _, m in linears)
    return model, {
        "sparsity_decoder_linears": round(lin_zero / max(lin_total, 1), 4),
        "pattern": f"{n}:{m}",
        "linears_masked": len(linears),
        **counts,
        "sparsity_overall": round(1 - counts["params_nonzero"] / counts["params_total"], 4),
        "sparse_kernel": "cuda semi-structured (not used when saving)" if kernel else "none on this machine (CPU)",
        "speedup": "none: dense weights with zeros; needs a GPU 2:4 kernel",
    }
