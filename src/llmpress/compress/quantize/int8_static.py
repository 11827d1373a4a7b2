"""int8-static: int8 weights and int8 activations with scales calibrated ahead of time.

Calibration runs N windows of a corpus through the float model and records, per Linear
input channel, max |x|. With `smoothquant` (Xiao et al. 2022) each input channel j is divided
by s_j = max|X_j|^a / max|W_j|^(1-a) and the weight column multiplied by it, moving activation
outliers into the weights; the static per-tensor activation scale is max |x / s| / 127.
Storage per Linear: `qweight` int8 [out, in], `scales` f32 [out], `act_scale` f32 [1],
`smooth` f32 [in]. Kernel: torch._int_mm (int8 x int8 -> int32). Layers in `skip` are stored as
int8-weight-only (see that scheme) unless skip_as="float".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmpress.compress.quantize.base import QuantConfig, Scheme, register_scheme
from llmpress.compress.quantize.common import decoder_linears, swap_linears
from llmpress.compress.quantize.layers import Int8StaticLinear, Int8WeightOnlyLinear
from llmpress.errors import ConfigError


@dataclass
class Int8StaticConfig(QuantConfig):
    calibration: str = "builtin:pydoc"
    samples: int = 32
    seq_len: int = 128
    smoothquant: bool = True
    alpha: float = 0.5
    # Clip the activation range at this quantile of per-token max |x| (1.0 = plain absmax).
    clip_quantile: float = 1.0
    # Layers (name suffixes) whose activations stay float. SmolLM2's down_proj inputs
    # (silu(gate) * up) carry its massive outliers: static per-tensor int8 there costs +26 %
    # perplexity (measured), so by default they get int8 weights with float activations.
    skip: tuple[str, ...] = ("down_proj",)
    skip_as: str = "int8-weight-only"  # or "float"
    lm_head: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"SmoothQuant alpha {self.alpha} is outside [0, 1]", "pass --alpha 0.5")
        if not 0.5 <= self.clip_quantile <= 1.0:
            raise ConfigError(f"clip quantile {self.clip_quantile} is outside [0.5, 1]", "use 0.999 or 1.0")
        self.skip = tuple(self.skip)
        if self.skip_as not in ("int8-weight-only", "float"):
            raise ConfigError(f"skip_as {self.skip_as!r} is not int8-weight-only or float", "pass skip_as=float")


def transform(model: nn.Module, tokenizer: Any, config: Int8StaticConfig, progress: Any = None) -> None:
    from llmpress.compress.quantize.calibration import calibration_batches, run_with_hooks

    batches = calibration_batches(tokenizer, config.calibration, config.samples, config.seq_len)
    lins = {n: m for n, m in decoder_linears(model) if not n.endswith(tuple(config.skip))}
    chan_max: dict[str, torch.Tensor] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        m = x.abs().amax(0)
        chan_max[name] = m if name not in chan_max else torch.maximum(chan_max[name], m)

    # Pass 1: per-channel ranges (they decide the smoothing); pass 2: per-token max |x / s|.
    run_with_hooks(model, batches, lins, observe, progress, what="calibrate (channel ranges)")
    smooth: dict[str, torch.Tensor | None] = {}
    for name, lin in lins.items():
        smooth[name] = None
        if config.smoothquant:
            xmax = chan_max[name].clamp(min=1e-5)
            wmax = lin.weight.detach().abs().amax(0).clamp(min=1e-5)
            smooth[name] = (xmax.pow(config.alpha) / wmax.pow(1 - config.alpha)).clamp(min=1e-5)
    token_max: dict[str, list[torch.Tensor]] = {}

    def observe_tokens(name: str, x: torch.Tensor) -> None:
        s = smooth[name]
        token_max.setdefault(name, []).append((x.abs() if s is None else x.abs() / s).amax(1))

    run_with_hooks(model, batches, lins, observe_tokens, progress, what="calibrate (activation scales)")
    task = progress.add_task("int8 static", total=len(lins)) if progress else None

    def make(name: str, lin: nn.Linear) -> nn.Module:
        if name not in lins:
            return Int8WeightOnlyLinear.from_float(lin) if config.skip_as == "int8-weight-only" else lin
        per_token = torch.cat(token_max.pop(name))
        absmax = float(per_token.max()) if config.clip_quantile >= 1.0 else float(
            torch.quantile(per_token, config.clip_quantile))
        if task is not None:
            progress.advance(task)
        return Int8StaticLinear.from_float(lin, absmax, smooth[name])

    swap_linears(model, make)


register_scheme(Scheme("int8-static", Int8StaticConfig, transform,
                       "qweight int8 [out,in] + scales f32 [out] + act_scale f32 [1] + smooth f32 [in] per Linear",
                       "int8 weights + calibrated static int8 activations (SmoothQuant option), torch._int_mm"))
