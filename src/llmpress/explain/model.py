"""Load any artifact so it runs eagerly with attention weights and gradients.

Quantized modules are swapped for float `nn.Linear` / `nn.Embedding` holding their dequantized
weights (the reference path): attributions need gradients, which the int kernels do not have.
The weights are read by probing each module (y = module(I) gives W^T + b), so every scheme that
behaves as a linear map works without knowing its storage format.
"""

from __future__ import annotations

from typing import Any

from llmpress.errors import SourceError


def _dequantized(mod: Any) -> Any:
    import torch
    from torch import nn

    with torch.no_grad():
        if hasattr(mod, "num_embeddings") and hasattr(mod, "embedding_dim"):
            w = mod(torch.arange(mod.num_embeddings)).float()
            emb = nn.Embedding(mod.num_embeddings, mod.embedding_dim, padding_idx=getattr(mod, "padding_idx", None))
            emb.weight.data.copy_(w)
            return emb
        if hasattr(mod, "in_features") and hasattr(mod, "out_features"):
            zero = mod(torch.zeros(1, mod.in_features)).float()[0]
            wt = mod(torch.eye(mod.in_features)).float() - zero
            has_bias = getattr(mod, "bias", None) is not None
            lin = nn.Linear(mod.in_features, mod.out_features, bias=has_bias)
            lin.weight.data.copy_(wt.T)
            if has_bias:
                lin.bias.data.copy_(zero)
            return lin
    raise SourceError(f"cannot read the weights of quantized module {type(mod).__name__}",
                      "explain the float parent of this artifact instead")


def dequantize_for_reference(model: Any) -> int:
    """Replace every quantized module by its float equivalent; returns how many were replaced."""
    from llmpress.compress.quantize.layers import QuantModule

    names = [n for n, m in model.named_modules() if isinstance(m, QuantModule)]
    for n in names:
        model.set_submodule(n, _dequantized(model.get_submodule(n)))
    return len(names)


def load_eager(art: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(float32 model with eager attention, tokenizer, notes) for an artifact."""
    import torch

    model = art.load_model()
    tok = art.load_tokenizer()
    notes: dict[str, Any] = {"loader": art.manifest.loader}
    if art.manifest.loader == "quantized":
        notes["dequantized_modules"] = dequantize_for_reference(model)
    model = model.float()
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        model.config._attn_implementation = "eager"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    return model, tok, notes
