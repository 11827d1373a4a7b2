"""Bottleneck adapters (the seeds' Pfeiffer-style adapter), as the closest PEFT method.

Why not the real thing: the maintained library for Pfeiffer adapters, `adapters` 1.3.0
(AdapterHub), pins transformers ~=4.57 and cannot load beside the installed transformers
5.x; PEFT has no serial bottleneck adapter. The closest PEFT method is a LoRA placed only on
each block's FFN output projection with rank = hidden_size / reduction_factor: a linear
bottleneck (down to r, up to hidden) added at the same place a Pfeiffer adapter sits, trained
with the base frozen. It differs in being parallel to the projection and having no
non-linearity, which also makes it mergeable into the base weights.
"""

from __future__ import annotations

from typing import Any

from llmpress.tune.config import AdapterConfig
from llmpress.tune.lora import lora_model

Config = AdapterConfig

# The module that writes each block's FFN output back to the residual stream.
FFN_OUTPUT: dict[str, list[str]] = {
    "llama": ["mlp.down_proj"], "mistral": ["mlp.down_proj"], "qwen2": ["mlp.down_proj"],
    "qwen3": ["mlp.down_proj"], "gemma": ["mlp.down_proj"], "gemma2": ["mlp.down_proj"],
    "phi3": ["mlp.down_proj"], "gpt2": ["mlp.c_proj"], "gpt_neox": ["mlp.dense_4h_to_h"], "opt": ["fc2"],
}


def prepare(model: Any, cfg: AdapterConfig, tokenizer_path: str) -> Any:
    from llmpress.errors import ConfigError

    model_type = getattr(model.config, "model_type", "")
    if model_type not in FFN_OUTPUT:
        raise ConfigError(f"no known FFN output module for model type {model_type!r}",
                          "use the lora method with --target-modules naming the FFN output projection")
    width = max(1, int(model.config.hidden_size) // cfg.reduction_factor)
    # alpha = r keeps the update's scale at 1, like an adapter's plain residual add.
    return lora_model(model, width, width, 0.0, FFN_OUTPUT[model_type])
