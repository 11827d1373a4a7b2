"""int8-weight-only: per-output-channel symmetric int8 weights, float activations.

Storage per Linear: `qweight` int8 [out, in], `scales` float32 [out] (w ≈ qweight * scale);
with `lm_head`, the head is int8 too and a tied embedding shares its tensors (stored once).
Kernel: `aten._weight_int8pack_mm` (int8 weights consumed directly, no float copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from llmpress.compress.quantize.base import QuantConfig, Scheme, register_scheme
from llmpress.compress.quantize.common import decoder_linears, quantize_head_int8, swap_linears
from llmpress.compress.quantize.layers import Int8WeightOnlyLinear


@dataclass
class Int8WeightOnlyConfig(QuantConfig):
    pass


def transform(model: nn.Module, tokenizer: Any, config: Int8WeightOnlyConfig, progress: Any = None) -> None:
    task = progress.add_task("int8 weights", total=len(decoder_linears(model))) if progress else None
    swap_linears(model, lambda _n, lin: Int8WeightOnlyLinear.from_float(lin),
                 (lambda: progress.advance(task)) if progress else None)
    if config.lm_head:
        quantize_head_int8(model)


register_scheme(Scheme("int8-weight-only", Int8WeightOnlyConfig, transform,
                       "qweight int8 [out,in] + scales f32 [out] per Linear; tied head/embedding stored once",
                       "per-channel symmetric int8 weights, aten._weight_int8pack_mm kernel"))
