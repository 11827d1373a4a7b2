"""int4-weight-only: groupwise asymmetric 4-bit weights, optional GPTQ calibration.

Storage per Linear: `qweight` uint8 [out, in/2] (two codes a byte, low nibble first),
`scales` and `mins` float16 [out, in/group]; w = code * scale + min. With `lm_head` the head
is int8 per-channel (a tied embedding shares it): 4-bit logits cost too much quality for
~20 MB. Kernel: `aten._weight_int4pack_mm_for_cpu` after an ISA-specific repack at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmpress.compress.quantize.base import QuantConfig, Scheme, register_scheme
from llmpress.compress.quantize.common import check_groups, decoder_linears, quantize_head_int8, swap_linears
from llmpress.compress.quantize.layers import INT4_GROUP_SIZES, Int4WeightOnlyLinear
from llmpress.errors import ConfigError

METHODS = ("rtn", "gptq")


@dataclass
class Int4WeightOnlyConfig(QuantConfig):
    group_size: int = 64
    # rtn: round to nearest; gptq: error compensation from calibration text (needs `calibration`).
    method: str = "rtn"
    calibration: str | None = None
    samples: int = 128
    seq_len: int = 128
    damp: float = 0.01
    act_order: bool = True  # GPTQ: most active input columns first (static groups)

    def validate(self) -> None:
        if self.group_size not in INT4_GROUP_SIZES:
            raise ConfigError(f"int4 group size {self.group_size} is not supported",
                              f"use one of {', '.join(map(str, INT4_GROUP_SIZES))}", param="group_size")
        if self.calibration and self.method == "rtn":
            self.method = "gptq"
        if self.method not in METHODS:
            raise ConfigError(f"unknown int4 method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.method == "gptq" and not self.calibration:
            raise ConfigError("int4 gptq needs calibration text", "pass --calibration builtin:pydoc")


def collect_hessians(model: nn.Module, tokenizer: Any, spec: str, samples: int, seq_len: int,
                     progress: Any = None) -> dict[str, torch.Tensor]:
    """H = sum x x^T / n per distinct Linear input (q/k/v and gate/up share one)."""
    from llmpress.compress.quantize.calibration import calibration_batches, run_with_hooks

    batches = calibration_batches(tokenizer, spec, samples, seq_len)
    lins = dict(decoder_linears(model))
    # Linears fed the same tensor share one Hessian: hook the first of each group only.
    owners: dict[str, str] = {}
    firsts: dict[str, nn.Module] = {}
    seen_inputs: dict[int, str] = {}
    probe: dict[str, torch.Tensor] = {}

    def record(name: str, x: torch.Tensor) -> None:
        probe[name] = x  # kept alive, so no later input can reuse its address


    run_with_hooks(model, batches[:1, :16], lins, record)
    for name in lins:
        key = probe[name].data_ptr() if name in probe else None
        if key is None:
            raise ConfigError(f"layer {name} was not reached by a forward pass", "this architecture is unsupported")
        owners[name] = seen_inputs.setdefault(key, name)
        if owners[name] == name:
            firsts[name] = lins[name]
    hs = {n: torch.zeros(m.in_features, m.in_features) for n, m in firsts.items()}

    def accumulate(name: str, x: torch.Tensor) -> None:
        hs[name].addmm_(x.t(), x)

    run_with_hooks(model, batches, firsts, accumulate, progress, what="calibrate (Hessians)")
    for h in hs.values():
        h /= batches.numel()
    return {n: hs[owners[n]] for n in lins}


def transform(model: nn.Module, tokenizer: Any, config: Int4WeightOnlyConfig, progress: Any = None) -> None:
    from llmpress.compress.quantize.gptq import gptq_int4

    check_groups(model, config.group_size)
    g = config.group_size
    hs = None
    if config.method == "gptq":
        assert config.calibration is not None
        hs = collect_hessians(model, tokenizer, config.calibration, config.samples, config.seq_len, progress)
    task = progress.add_task(f"int4 g{g} ({config.method})", total=len(decoder_linears(model))) if progress else None

    def make(name: str, lin: nn.Linear) -> nn.Module:
        if hs is None:
            return Int4WeightOnlyLinear.from_float(lin, g)
        codes, s, m = gptq_int4(lin.weight, hs.pop(name), g, config.damp, act_order=config.act_order)
        return Int4WeightOnlyLinear.from_codes(codes, s, m, g, lin.bias)

    swap_linears(model, make, (lambda: progress.advance(task)) if progress else None)
    if config.lm_head:
        quantize_head_int8(model)


register_scheme(Scheme("int4-weight-only", Int4WeightOnlyConfig, transform,
                       "qweight uint8 [out,in/2] nibbles + scales/mins f16 [out,in/g] per Linear; int8 head",
                       "groupwise 4-bit weights (RTN or GPTQ), aten._weight_int4pack_mm_for_cpu kernel"))
