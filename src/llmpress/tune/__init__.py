"""Fine-tuning methods: full, LoRA, prompt tuning, bottleneck adapters; one name -> method table.

Like PEFT's tuners, each method is a module with a config dataclass and a `prepare(model, cfg,
tokenizer_path)` that returns the trainable model. `METHODS` is the one place the CLI, recipes
and docs list them from. `llmpress.tune.run.tune_artifact` is the step (artifact -> artifact).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from llmpress.methods import MethodTable
from llmpress.tune.config import AdapterConfig, FullConfig, LoraConfig, PromptConfig, TrainConfig


@dataclass(frozen=True)
class Method:
    name: str
    config: type
    module: str
    produces_adapter: bool  # True: a small PEFT artifact on its base; False: a standalone hf artifact
    mergeable: bool  # can its adapter be folded into the base weights (`llmpress tune merge`)?
    description: str

    def prepare(self, model: Any, cfg: Any, tokenizer_path: str) -> Any:
        return importlib.import_module(self.module).prepare(model, cfg, tokenizer_path)


METHODS: MethodTable[Method] = MethodTable("tuning method", {
    "full": Method("full", FullConfig, "llmpress.tune.full", False, False,
                   "every parameter trains; gradient checkpointing optional; bf16 autocast where the CPU has it"),
    "lora": Method("lora", LoraConfig, "llmpress.tune.lora", True, True,
                   "low-rank updates on attention projections (per-architecture defaults)"),
    "prompt": Method("prompt", PromptConfig, "llmpress.tune.prompt", True, False,
                     "N learned virtual tokens prepended to the input, optional init from a text"),
    "adapter": Method("adapter", AdapterConfig, "llmpress.tune.bottleneck", True, True,
                      "bottleneck on each FFN output (hidden/16), via PEFT (see bottleneck.py for why)"),
}, param="method")


def get_method(name: str) -> Method:
    return METHODS.get_method(name)


__all__ = ["METHODS", "Method", "get_method", "TrainConfig", "FullConfig", "LoraConfig", "PromptConfig",
           "AdapterConfig"]
