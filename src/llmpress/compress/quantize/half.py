"""fp16 / bf16: every float tensor cast to half precision.

Storage: a plain Hugging Face checkpoint (`save_pretrained`, safetensors in fp16 / bf16,
`torch_dtype` in config.json); it reloads in that dtype with the ordinary `hf` loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmpress.compress.quantize.base import QuantConfig, Scheme, register_scheme


@dataclass
class Fp16Config(QuantConfig):
    pass


@dataclass
class Bf16Config(QuantConfig):
    pass


def _cast(dtype: torch.dtype) -> Any:
    def transform(model: nn.Module, tokenizer: Any, config: QuantConfig, progress: Any = None) -> None:
        # Parameters only: rotary `inv_freq` stays float32, as from_pretrained(dtype=...) rebuilds it.
        for p in model.parameters():
            p.data = p.data.to(dtype)
        model.config.dtype = dtype

    return transform


register_scheme(Scheme("fp16", Fp16Config, _cast(torch.float16), "HF safetensors, every float tensor float16",
                       "half precision (2 bytes / weight)", loader="hf"))
register_scheme(Scheme("bf16", Bf16Config, _cast(torch.bfloat16), "HF safetensors, every float tensor bfloat16",
                       "bfloat16 (2 bytes / weight, fp32 range)", loader="hf"))
