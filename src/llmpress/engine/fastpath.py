"""The decode fast path: every decoder layer of a decode-only step in one C++ call (kernels.cpp `Decoder`).

Chosen by measurement (benchmarks/decode_profile.py): on SmolLM2-135M (30 layers x 576) the Python
runner spends as long on ~40 operator calls per layer (Python, dispatcher, small tensors, the KV
gather) as on reading the weights. The C++ decoder runs rmsnorm, q/k/v, rope, the KV write,
attention read in place through the block tables, o_proj, rmsnorm, gate/up, silu*mul and down for all
decode rows per layer, on the same weights (float of any dtype via aten, our int8 / int4 kernels) and
the same paged KV cache as the reference path, so prefill and mixed steps keep using the reference
path and both read and write one cache.

`build(runner)` returns a `FastDecoder` or None; None logs ONE line saying why (model shape it does not
cover, layer types it does not know, no compiled kernels, or LLMPRESS_FASTPATH=0, which forces the
reference path for tests and comparisons).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

log = logging.getLogger("llmpress.engine")

ENV = "LLMPRESS_FASTPATH"


class Unsupported(Exception):
    """Why the fast path cannot serve this model (becomes the one log line)."""


def disabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no")


def _lin_spec(mod: nn.Module, where: str) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """(kind, weight, scales, mins, group, bias) for the C++ side; kind 0 float, 1 int8, 2 int4."""
    from llmpress.compress.quantize.layers import Int4WeightOnlyLinear, Int8WeightOnlyLinear

    empty = torch.empty(0)
    bias = getattr(mod, "bias", None)
    b = bias.detach().float().contiguous() if isinstance(bias, torch.Tensor) else empty
    if type(mod) is nn.Linear:
        w = mod.weight.detach()
        if w.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise Unsupported(f"{where} has weight dtype {w.dtype}")
        return 0, w.contiguous(), empty, empty, 0, b
    if type(mod) is Int8WeightOnlyLinear:
        mod.prepare()
        if mod._kern is None:
            raise Unsupported(f"{where}: int8 kernel unavailable (input width {mod.in_features} not a multiple of 16)")
        return 1, mod.qweight, mod.scales, empty, 0, b
    if type(mod) is Int4WeightOnlyLinear:
        if mod._packed is None or mod._kern is None:
            mod.prepare()
        if mod._kern is None or mod._sz is None or mod._packed is None:
            raise Unsupported(f"{where}: int4 kernel unavailable")
        return 2, mod._packed, mod._sz[0].contiguous(), mod._sz[1].contiguous(), mod.group_size, b
    raise Unsupported(f"{where} is a {type(mod).__name__}, which the fused decoder does not know "
                      "(plain Linear, int8 / int4 weight-only)")


def _norm(norm: nn.Module, where: str) -> tuple[torch.Tensor, float]:
    w = getattr(norm, "weight", None)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if not type(norm).__name__.endswith("RMSNorm") or not isinstance(w, torch.Tensor) or eps is None:
        raise Unsupported(f"{where} is a {type(norm).__name__}, not a standard RMSNorm")
    if getattr(norm, "add_unit_offset", False) or "Gemma" in type(norm).__name__:
        raise Unsupported(f"{where} uses a (1 + weight) RMSNorm")
    return w.detach().float().contiguous(), float(eps)


class FastDecoder:
    """The C++ decoder bound to one runner's weights and KV cache; `forward` runs all layers for decode rows."""

    name = "fused-cpp"

    def __init__(self, runner: Any, kern: Any) -> None:
        self.runner = runner
        self.dec = kern.Decoder(runner.head_dim)
        cfg = runner.model.config
        act = str(getattr(cfg, "hidden_act", "silu"))
        if act not in ("silu", "swish"):
            raise Unsupported(f"activation {act!r} (the fused decoder does silu)")
        for li, layer in enumerate(runner.layers):
            a, mlp = layer.self_attn, layer.mlp
            if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
                raise Unsupported(f"layer {li}'s MLP is not gate/up/down")
            ln1, e1 = _norm(layer.input_layernorm, f"layer {li} input norm")
            ln2, e2 = _norm(layer.post_attention_layernorm, f"layer {li} post-attention norm")
            qkv = [_lin_spec(runner.qkv_mod[li], f"layer {li} qkv")] if runner.qkv_mod[li] is not None else [
                _lin_spec(m, f"layer {li} {n}") for n, m in (("q_proj", a.q_proj), ("k_proj", a.k_proj),
                                                             ("v_proj", a.v_proj))]
            gu = [_lin_spec(runner.gate_up_mod[li], f"layer {li} gate_up")] if runner.gate_up_mod[li] is not None else [
                _lin_spec(m, f"layer {li} {n}") for n, m in (("gate_proj", mlp.gate_proj), ("up_proj", mlp.up_proj))]
            self.dec.add_layer(ln1, e1, ln2, e2, qkv, _lin_spec(a.o_proj, f"layer {li} o_proj"), gu,
                               _lin_spec(mlp.down_proj, f"layer {li} down_proj"), runner.n_heads[li],
                               runner.n_kv[li], runner.scaling[li], runner.k_cache[li], runner.v_cache[li])

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: list[int],
                block_tables: list[list[int]], block_size: int) -> torch.Tensor:
        return self.dec.forward(h, cos, sin, positions, block_tables, block_size)


def build(runner: Any) -> FastDecoder | None:
    """The fast path for `runner`'s model, or None with one log line saying why the reference path runs."""
    if disabled():
        log.info("decode fast path off (%s=0): using the reference path", ENV)
        return None
    from llmpress.compress.quantize import kernels

    kern = kernels.get()
    if kern is None or not hasattr(kern, "Decoder"):
        log.info("decode fast path unavailable (llmpress's C++ kernels are not built on this machine): "
                 "using the reference path")
        return None
    try:
        return FastDecoder(runner, kern)
    except Unsupported as e:
        log.info("decode fast path does not apply (%s): using the reference path", e)
        return None
