"""int8-dynamic: torch's `quantize_dynamic` (int8 weights, activations quantized per call).

Quantization is done by `torch.ao.quantization.quantize_dynamic` itself; its modules hold
fbgemm packed params (a TorchScript object safetensors cannot store), so the int weights
and scales are read back into `Int8DynamicLinear` for storage and re-packed at load.
Storage per Linear: `qweight` int8 [out, in], `scales` float32 [out] (per channel) or [1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmpress.compress.quantize.base import QuantConfig, Scheme, register_scheme
from llmpress.compress.quantize.common import decoder_linears
from llmpress.compress.quantize.layers import Int8DynamicLinear


@dataclass
class Int8DynamicConfig(QuantConfig):
    # Per-channel weight scales (torch's per_channel_dynamic_qconfig); False = torch's default per-tensor.
    per_channel: bool = True
    lm_head: bool = False


def transform(model: nn.Module, tokenizer: Any, config: Int8DynamicConfig, progress: Any = None) -> None:
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if config.per_channel else default_dynamic_qconfig
    names = [n for n, _ in decoder_linears(model)]
    if config.lm_head and isinstance(model.get_output_embeddings(), nn.Linear):
        names.append(next(n for n, m in model.named_modules() if m is model.get_output_embeddings()))
    task = progress.add_task("int8 dynamic", total=len(names)) if progress else None
    for name in names:
        lin = model.get_submodule(name)
        holder = nn.Sequential(lin)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dq = quantize_dynamic(holder, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=False)[0]
        model.set_submodule(name, Int8DynamicLinear.from_dynamic(dq))
        if task is not None:
            progress.advance(task)


register_scheme(Scheme("int8-dynamic", Int8DynamicConfig, transform,
                       "qweight int8 [out,in] + scales f32 [out] (or [1]) per Linear; fbgemm prepack at load",
                       "torch quantize_dynamic: int8 weights, per-call int8 activations"))
