"""Per-token attribution of the next-token choice: integrated gradients and gradient x input.

Written here (about 30 lines) rather than with Captum: Captum pins its own torch range and would
risk replacing the torch build this project depends on. Attribution is of the log-probability of
the chosen next token, with respect to the input embeddings, summed over the hidden dimension.
"""

from __future__ import annotations

from typing import Any


def _logprob(model: Any, embeds: Any, target: int) -> Any:
    import torch

    logits = model(inputs_embeds=embeds).logits[:, -1].float()
    return torch.log_softmax(logits, -1)[:, target]


def integrated_gradients(model: Any, input_ids: Any, target: int, steps: int = 32,
                         chunk: int = 8) -> dict[str, Any]:
    """IG with a zero-embedding baseline and a Riemann (midpoint) sum over `steps` points.

    Returns per-token attributions, and f(input) - f(baseline), which the attributions sum to
    (completeness) up to the discretisation error, also returned."""
    import torch

    emb = model.get_input_embeddings()(input_ids).detach().float()  # [1, T, d]
    base = torch.zeros_like(emb)
    grads = torch.zeros_like(emb)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    for s in range(0, steps, chunk):
        a = alphas[s:s + chunk].view(-1, 1, 1)
        x = (base + a * (emb - base)).requires_grad_(True)
        lp = _logprob(model, x, target)
        (g,) = torch.autograd.grad(lp.sum(), x)
        grads += g.sum(0, keepdim=True)
    attr = ((emb - base) * grads / steps)[0].sum(-1)
    with torch.no_grad():
        delta = float(_logprob(model, emb, target)[0] - _logprob(model, base, target)[0])
    return {"scores": attr.tolist(), "delta": delta, "error": float(attr.sum()) - delta, "steps": steps}


def gradient_x_input(model: Any, input_ids: Any, target: int) -> list[float]:
    """The one-step approximation: gradient at the input times the input, summed per token."""
    import torch

    emb = model.get_input_embeddings()(input_ids).detach().float().requires_grad_(True)
    (g,) = torch.autograd.grad(_logprob(model, emb, target).sum(), emb)
    return (g * emb)[0].sum(-1).tolist()
