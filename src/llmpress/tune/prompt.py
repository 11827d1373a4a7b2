"""Prompt tuning through PEFT: N learned virtual-token embeddings, optionally initialised from a text."""

from __future__ import annotations

from typing import Any

from llmpress.tune.config import PromptConfig

Config = PromptConfig


def prepare(model: Any, cfg: PromptConfig, tokenizer_path: str) -> Any:
    import peft

    kw: dict[str, Any] = {}
    if cfg.init_text:
        kw = {"prompt_tuning_init": peft.PromptTuningInit.TEXT, "prompt_tuning_init_text": cfg.init_text,
              "tokenizer_name_or_path": tokenizer_path}
    pcfg = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens, **kw)
    return peft.get_peft_model(model, pcfg)
