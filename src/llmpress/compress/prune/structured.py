"""Structured pruning: attention heads and MLP intermediate neurons, physically removed.

Importance is measured on calibration data from the activations that enter `o_proj` and
`down_proj` (what each head / neuron actually adds to the residual stream):
  head h:   E_tokens || W_o[:, h] · a_h ||²   (exact contribution of the head's output)
  neuron j: E_tokens[x_j²]^½ · || W_down[:, j] ||   (Wanda/FLAP-style activation × weight norm)

GQA: query heads that share a key/value head form a group. Hugging Face Llama configs have
one `num_attention_heads` and one `num_key_value_heads` for all layers, so to reload with
plain `from_pretrained` every layer keeps the same shape: we remove the same number of query
heads from *every* kv group in *every* layer, choosing which ones per group by importance,
and keep all kv heads. MLP neurons: the same count per layer, chosen per layer.
torch.nn.utils.prune only masks weights (nothing gets smaller), so the slicing is done here.

Reconstruction (on by default): removing inputs of `o_proj` / `down_proj` does not change the
inputs that stay (heads are independent given the kept kv heads; neurons are independent), so
each projection can be refitted in closed form to what the parent's full projection produced
on the calibration tokens:  W_kept' = W · C[:, K] · (C[K, K] + λI)⁻¹,  with C = E[x xᵀ] of the
projection's input and K the kept inputs. This is the least-squares optimum for the layer's
output given its input (the OBS / SparseGPT idea applied to whole columns); λ is a small
fraction (1e-3) of the mean diagonal. The cut itself (`apply`) stays exact; `reconstruct`
refits after. Measured on SmolLM2-135M, heads 33 % + MLP 25 % cut, 64 calibration windows of
256 pydoc tokens, before any recovery training: pydoc perplexity 12.56 -> 64.7 cut alone, 17.0
cut + refit. The refit fits the calibration text's distribution: on fortunes quotes (text unlike
the calibration) perplexity goes 66 -> 463 cut alone, 213 with the refit (benchmarks/results/pruning.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llmpress.compress.decoder import decoder_layers
from llmpress.errors import ConfigError


@dataclass
class StructuredPlan:
    """Which query heads and MLP neurons each layer keeps (sorted indices into the parent)."""

    keep_heads: list[list[int]] = field(default_factory=list)
    keep_neurons: list[list[int]] = field(default_factory=list)
    heads_before: int = 0
    heads_after: int = 0
    neurons_before: int = 0
    neurons_after: int = 0


def _shape(model: Any) -> tuple[int, int, int, int]:
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return n_heads, n_kv, head_dim, cfg.intermediate_size


@dataclass
class Calibration:
    """What one pass over the calibration windows measured: importance per head / neuron and,
    when asked, the second moment E[x xᵀ] of each layer's o_proj and down_proj input."""

    head_scores: Any
    neuron_scores: Any
    attn_cov: list[Any] = field(default_factory=list)
    mlp_cov: list[Any] = field(default_factory=list)
    tokens: int = 0


def importance_scores(model: Any, batches: Any, progress: Any = None) -> tuple[Any, Any]:
    """Per-layer head scores (L, H) and neuron scores (L, I) from forwards over calibration windows."""
    cal = calibrate(model, batches, progress, covariance=False)
    return cal.head_scores, cal.neuron_scores


def calibrate(model: Any, batches: Any, progress: Any = None, covariance: bool = True) -> Calibration:
    """One pass over the calibration windows: head / neuron importance, and the input second
    moments `reconstruct` needs (float64, I x I per layer: 19 MB a layer for SmolLM2's MLP)."""
    import torch

    n_heads, _, head_dim, inter = _shape(model)
    layers = decoder_layers(model)
    L = len(layers)
    head_acc = torch.zeros(L, n_heads, dtype=torch.float64)
    neur_acc = torch.zeros(L, inter, dtype=torch.float64)
    attn_cov = [torch.zeros(n_heads * head_dim, n_heads * head_dim, dtype=torch.float64) for _ in range(L)] \
        if covariance else []
    mlp_cov = [torch.zeros(inter, inter, dtype=torch.float64) for _ in range(L)] if covariance else []
    tokens = [0]
    handles = []

    def o_hook(i: int) -> Any:
        def fn(mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()  # (B, T, H*hd)
            x = x.reshape(-1, n_heads, head_dim)
            w = mod.weight.detach().float().view(mod.weight.shape[0], n_heads, head_dim)  # (D, H, hd)
            contrib = torch.einsum("nhd,ohd->nho", x, w)  # each head's output in the residual stream
            head_acc[i] += contrib.pow(2).sum(-1).sum(0).double()
            if covariance:
                flat = x.reshape(-1, n_heads * head_dim)
                attn_cov[i] += (flat.T @ flat).double()
        return fn

    def down_hook(i: int) -> Any:
        def fn(mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float().reshape(-1, inter)
            neur_acc[i] += x.pow(2).sum(0).double()
            if covariance:
                mlp_cov[i] += (x.T @ x).double()
        return fn

    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(o_hook(i)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(down_hook(i)))
    task = progress.add_task("calibration (importance)", total=len(batches)) if progress is not None else None
    try:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b.unsqueeze(0) if b.dim() == 1 else b)
                tokens[0] += b.numel()
                if progress is not None:
                    progress.advance(task)
    finally:
        for h in handles:
            h.remove()
    n = max(tokens[0], 1)
    head_scores = head_acc / n
    col_norm = torch.stack([layer.mlp.down_proj.weight.detach().float().norm(dim=0) for layer in layers]).double()
    neuron_scores = (neur_acc / n).sqrt() * col_norm
    return Calibration(head_scores, neuron_scores, [c / n for c in attn_cov], [c / n for c in mlp_cov], n)


def refit(weight: Any, cov: Any, keep: Any, damp: float = 1e-3) -> Any:
    """Least-squares refit of a projection's kept input columns: W C[:, K] (C[K, K] + λI)⁻¹.

    `weight` (out, in) is the parent's projection, `cov` (in, in) = E[x xᵀ] of its input, `keep` the
    kept input indices. Returns the (out, len(keep)) weight that best reproduces W x from x[K]."""
    import torch

    c_kk = cov[keep][:, keep].clone()
    lam = damp * float(c_kk.diagonal().mean())
    c_kk.diagonal().add_(lam)
    rhs = cov[keep] @ weight.double().T  # (k, in) @ (in, out)
    sol = torch.linalg.solve(c_kk, rhs)  # (k, out)
    return sol.T.to(weight.dtype).contiguous()


def reconstruct(pruned: Any, parent: Any, p: StructuredPlan, cal: Calibration, damp: float = 1e-3) -> None:
    """Refit every pruned layer's o_proj and down_proj in place (see the module docstring)."""
    import torch

    _, _, head_dim, _ = _shape(parent)
    with torch.no_grad():
        for i, (new, old) in enumerate(zip(decoder_layers(pruned), decoder_layers(parent), strict=True)):
            cols = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in p.keep_heads[i]])
            new.self_attn.o_proj.weight.copy_(refit(old.self_attn.o_proj.weight, cal.attn_cov[i], cols, damp))
            neurons = torch.tensor(p.keep_neurons[i], dtype=torch.long)
            new.mlp.down_proj.weight.copy_(refit(old.mlp.down_proj.weight, cal.mlp_cov[i], neurons, damp))


def plan(model: Any, heads: float | None, mlp: float | None, head_scores: Any, neuron_scores: Any) -> StructuredPlan:
    """Choose what each layer keeps: the same counts everywhere (so the config stays uniform)."""
    import torch

    n_heads, n_kv, _, inter = _shape(model)
    group = n_heads // n_kv
    L = head_scores.shape[0]
    drop_per_group = 0
    if heads:
        drop_per_group = max(1, round(heads * group))
        if drop_per_group >= group:
            raise ConfigError(
                f"--heads {heads:.0%} would remove all {group} query heads that share a key/value head",
                f"use a smaller fraction (each kv group has {group} heads; at most {(group - 1) / group:.0%})")
    keep_n = inter
    if mlp:
        keep_n = max(1, int(round(inter * (1 - mlp))))
    p = StructuredPlan(heads_before=n_heads, heads_after=n_kv * (group - drop_per_group),
                       neurons_before=inter, neurons_after=keep_n)
    for i in range(L):
        kept: list[int] = []
        for g in range(n_kv):
            idx = list(range(g * group, (g + 1) * group))
            scores = head_scores[i, idx]
            order = torch.argsort(scores, descending=True)[: group - drop_per_group]
            kept.extend(sorted(idx[j] for j in order.tolist()))
        p.keep_heads.append(kept)
        top = torch.argsort(neuron_scores[i], descending=True)[:keep_n]
        p.keep_neurons.append(sorted(top.tolist()))
    return p


def apply(model: Any, p: StructuredPlan) -> Any:
    """A new model of the same class with the removed heads / neurons gone and the config updated."""
    import copy

    import torch

    n_heads, n_kv, head_dim, inter = _shape(model)
    cfg = copy.deepcopy(model.config)
    cfg.num_attention_heads = p.heads_after
    cfg.num_key_value_heads = n_kv
    cfg.head_dim = head_dim  # explicit: hidden_size // heads no longer equals head_dim
    cfg.intermediate_size = p.neurons_after
    sd = model.state_dict()
    new_sd: dict[str, Any] = {}
    prefix_of = {}
    for i, _ in enumerate(decoder_layers(model)):
        prefix_of[i] = f"model.layers.{i}."
    for key, t in sd.items():
        new_sd[key] = t
    for i, pre in prefix_of.items():
        rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in p.keep_heads[i]])
        neurons = torch.tensor(p.keep_neurons[i], dtype=torch.long)
        new_sd[pre + "self_attn.q_proj.weight"] = sd[pre + "self_attn.q_proj.weight"][rows].clone()
        if pre + "self_attn.q_proj.bias" in sd:
            new_sd[pre + "self_attn.q_proj.bias"] = sd[pre + "self_attn.q_proj.bias"][rows].clone()
        new_sd[pre + "self_attn.o_proj.weight"] = sd[pre + "self_attn.o_proj.weight"][:, rows].clone()
        for name in ("gate_proj", "up_proj"):
            new_sd[pre + f"mlp.{name}.weight"] = sd[pre + f"mlp.{name}.weight"][neurons].clone()
            if pre + f"mlp.{name}.bias" in sd:
                new_sd[pre + f"mlp.{name}.bias"] = sd[pre + f"mlp.{name}.bias"][neurons].clone()
        new_sd[pre + "mlp.down_proj.weight"] = sd[pre + "mlp.down_proj.weight"][:, neurons].clone()
    dtype = next(model.parameters()).dtype
    new = type(model)(cfg).to(dtype)
    new.load_state_dict(new_sd, strict=True)
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    new.eval()
    return new


def masked_reference(model: Any, p: StructuredPlan) -> Any:
    """A copy of the parent with removed heads / neurons zeroed instead of cut: the forward the pruned
    model must reproduce exactly (used by tests to prove the slicing is right)."""
    import copy

    import torch

    n_heads, _, head_dim, inter = _shape(model)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for i, layer in enumerate(decoder_layers(ref)):
            for h in set(range(n_heads)) - set(p.keep_heads[i]):
                layer.self_attn.o_proj.weight[:, h * head_dim:(h + 1) * head_dim] = 0
            drop = sorted(set(range(inter)) - set(p.keep_neurons[i]))
            if drop:
                layer.mlp.down_proj.weight[:, drop] = 0
    return ref


def layer_output_error(pruned: Any, parent: Any, p: StructuredPlan, batches: Any) -> float:
    """Mean over layers and projections of ||y' - y||² / ||y||², each pruned o_proj / down_proj fed the
    parent's input at that point (its kept columns): the quantity `reconstruct` minimises."""
    import torch

    _, _, head_dim, _ = _shape(parent)
    pairs = list(zip(decoder_layers(pruned), decoder_layers(parent), strict=True))
    captured: list[tuple[Any, Any, Any, Any]] = []
    handles = []
    for i, (new, old) in enumerate(pairs):
        cols = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in p.keep_heads[i]])
        neurons = torch.tensor(p.keep_neurons[i], dtype=torch.long)
        for ref, mod, keep in ((old.self_attn.o_proj, new.self_attn.o_proj, cols),
                               (old.mlp.down_proj, new.mlp.down_proj, neurons)):
            handles.append(ref.register_forward_pre_hook(
                lambda m, a, ref=ref, mod=mod, keep=keep: captured.append((ref, mod, keep, a[0].detach()))))
    try:
        with torch.no_grad():
            parent(input_ids=batches)
    finally:
        for h in handles:
            h.remove()
    errs = []
    with torch.no_grad():
        for ref, mod, keep, x in captured:
            y = ref(x)
            errs.append(float((mod(x[..., keep]) - y).pow(2).sum() / y.pow(2).sum()))
    return sum(errs) / len(errs)


def run(model: Any, heads: float | None, mlp: float | None, batches: Any, progress: Any = None,
        reconstruct_outputs: bool = True, damp: float = 1e-3) -> tuple[Any, dict[str, Any]]:
    """Measure importance, plan, cut and (by default) refit. Returns the new model and a report."""
    cal = calibrate(model, batches, progress, covariance=reconstruct_outputs)
    p = plan(model, heads, mlp, cal.head_scores, cal.neuron_scores)
    new = apply(model, p)
    if reconstruct_outputs:
        reconstruct(new, model, p, cal, damp)
    report = {
        "heads_per_layer": [p.heads_before, p.heads_after],
        "heads_removed_fraction": round(1 - p.heads_after / p.heads_before, 4),
        "mlp_neurons_per_layer": [p.neurons_before, p.neurons_after],
        "mlp_removed_fraction": round(1 - p.neurons_after / p.neurons_before, 4),
        "policy": "same count per layer; query heads removed evenly from every kv group; all kv heads kept",
        "kept_heads": p.keep_heads,
        "reconstruction": {"damp": damp, "calibration_tokens": cal.tokens} if reconstruct_outputs else None,
    }
    if heads and not math.isclose(report["heads_removed_fraction"], heads, abs_tol=0.01):
        report["heads_note"] = (f"asked {heads:.0%} of heads; GQA groups of {p.heads_before // (_shape(model)[1])} "
                                f"allow {report['heads_removed_fraction']:.0%}")
    return new, report
