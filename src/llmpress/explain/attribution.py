"""Per-token attribution of the next-token choice: integrated gradients and gradient x input.

Written here (about 30 lines) rather than with Captum: Captum pins its own torch range and would
risk replacing the torch build this project depends on. Attribution is of the log-probability of
the chosen next token, with respect to the input embeddings, summed over the hidden dimension; the
baseline is the prompt with every token replaced by a reference token (`reference_token`), BOS kept.
"""

from __future__ import annotations

from typing import Any


def _logprob(model: Any, embeds: Any, target: int) -> Any:
    import torch

    logits = model(inputs_embeds=embeds).logits[:, -1].float()
    return torch.log_softmax(logits, -1)[:, target]


def baseline_embeddings(model: Any, input_ids: Any, reference_id: int, keep_first: bool) -> Any:
    """The IG baseline: every position holds the reference token (pad / eos), the first one is kept when it
    is BOS. Not the zero vector: RMSNorm makes a decoder nearly invariant to the scale of its input, so
    on a path from zero almost all the change happens in a sliver next to zero, which a Riemann sum misses."""
    import torch

    ref = torch.full_like(input_ids, reference_id)
    if keep_first:
        ref[:, 0] = input_ids[:, 0]
    return model.get_input_embeddings()(ref).detach().float()


def reference_token(model: Any, tokenizer: Any, input_ids: Any) -> int:
    """The first of pad, unk, eos, " " whose embedding is not near zero (a pad row is often initialised to
    zeros, and a near-zero baseline falls into the RMSNorm sliver described above)."""
    emb = model.get_input_embeddings().weight.detach().float()
    typical = float(emb[input_ids[0]].norm(dim=-1).mean())
    spaces = tokenizer(" ", add_special_tokens=False)["input_ids"]
    for tid in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id, *spaces[:1]):
        if tid is not None and 0 <= tid < emb.shape[0] and float(emb[tid].norm()) >= 0.25 * typical:
            return int(tid)
    return int(input_ids[0, -1])


def integrated_gradients(model: Any, input_ids: Any, target: int, reference_id: int, keep_first: bool = True,
                         steps: int = 32, chunk: int = 8) -> dict[str, Any]:
    """IG from the reference-token baseline with a midpoint Riemann sum over `steps` points.

    Returns per-token attributions, and f(input) - f(baseline), which the attributions sum to
    (completeness) up to the discretisation error, also returned. On real models the path between
    token embeddings leaves the data manifold and f can swing steeply along it: the error is reported
    (CLI table, HTML, JSON) rather than hidden; raise the steps or read gradient x input alongside."""
    import torch

    emb = model.get_input_embeddings()(input_ids).detach().float()  # [1, T, d]
    base = baseline_embeddings(model, input_ids, reference_id, keep_first)
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
    return {"scores": attr.tolist(), "delta": delta, "error": float(attr.sum()) - delta, "steps": steps,
            "reference_id": reference_id}


def gradient_x_input(model: Any, input_ids: Any, target: int) -> list[float]:
    """The one-step approximation: gradient at the input times the input, summed per token."""
    import torch

    emb = model.get_input_embeddings()(input_ids).detach().float().requires_grad_(True)
    (g,) = torch.autograd.grad(_logprob(model, emb, target).sum(), emb)
    return (g * emb)[0].sum(-1).tolist()
