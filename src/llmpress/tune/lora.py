"""LoRA through PEFT, with per-architecture default target modules."""

from __future__ import annotations

from typing import Any

from llmpress.errors import ConfigError
from llmpress.tune.config import LoraConfig

Config = LoraConfig

# Attention projections by default: at r=16 that is ~1.4 % of SmolLM2-135M, inside the
# 2 % budget, where "all-linear" would be ~3.6 %. PEFT's own table (q/v only for Llama)
# is the fallback for architectures not listed here.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "attn.c_proj"],
    "gpt_neox": ["query_key_value", "attention.dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
}


def default_targets(model: Any) -> list[str] | str:
    model_type = getattr(model.config, "model_type", "")
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    return list(PEFT_DEFAULTS.get(model_type, [])) or "all-linear"


def lora_model(model: Any, r: int, alpha: float, dropout: float, targets: list[str] | str) -> Any:
    """Wrap `model` with LoRA on `targets`; unknown module names are a clear ConfigError."""
    import peft

    pcfg = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=dropout,
                           target_modules=targets)
    try:
        return peft.get_peft_model(model, pcfg)
    except ValueError as e:
        raise ConfigError(f"LoRA target modules {targets} do not match this model: {str(e).splitlines()[0]}",
                          "pass --target-modules with names from the model (e.g. q_proj,v_proj)") from e


def prepare(model: Any, cfg: LoraConfig, tokenizer_path: str) -> Any:
    return lora_model(model, cfg.r, cfg.alpha, cfg.dropout, cfg.target_modules or default_targets(model))
