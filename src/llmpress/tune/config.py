"""Typed configs for tuning: one dataclass of training knobs, one per method (PEFT-style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from llmpress.errors import ConfigError


@dataclass
class TrainConfig:
    """Knobs shared by every method. `max_steps` > 0 overrides `epochs`; lr None = the method's default."""

    epochs: float = 1.0
    max_steps: int = -1
    lr: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    seq_len: int = 256
    warmup_steps: int = 0
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 0  # steps between evaluations; 0 = about 5 evaluations per run
    max_eval: int | None = 64  # eval examples (None = all)
    max_train: int | None = None
    bf16: str = "auto"  # "auto" (when the CPU has native bf16), "on" or "off": autocast mixed precision
    gradient_checkpointing: bool = False
    task: str = "auto"  # instruction | classification | causal_lm | auto

    def validate(self) -> None:
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError(f"epochs={self.epochs} with no max_steps trains nothing", "pass --epochs 1 or --max-steps N")
        if self.lr is not None and not (0 < self.lr < 1):
            raise ConfigError(f"learning rate {self.lr} is out of range", "use a value like 2e-4")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("batch size and gradient accumulation must be >= 1", "pass --batch-size 4")
        if self.bf16 not in ("auto", "on", "off"):
            raise ConfigError(f"bf16={self.bf16!r}", "use auto, on or off")


@dataclass
class FullConfig:
    """Full fine-tuning: every parameter is trained."""

    default_lr: float = 5e-5


@dataclass
class LoraConfig:
    """LoRA: low-rank updates on `target_modules` (None = the architecture's default, see lora.py)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None
    default_lr: float = 2e-4

    def validate(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"bad LoRA settings r={self.r} alpha={self.alpha} dropout={self.dropout}",
                              "use r >= 1, alpha > 0 and 0 <= dropout < 1")


@dataclass
class PromptConfig:
    """Prompt tuning: `num_virtual_tokens` learned embeddings prepended to every input."""

    num_virtual_tokens: int = 20
    init_text: str | None = None  # initialise the virtual tokens from this text's embeddings
    default_lr: float = 3e-2

    def validate(self) -> None:
        if not 1 <= self.num_virtual_tokens <= 512:
            raise ConfigError(f"{self.num_virtual_tokens} virtual tokens", "use 1..512 (20 is typical)")


@dataclass
class AdapterConfig:
    """Bottleneck adapter on each FFN output, width hidden_size / reduction_factor (Pfeiffer's default 16)."""

    reduction_factor: int = 16
    default_lr: float = 1e-3

    def validate(self) -> None:
        if self.reduction_factor < 1:
            raise ConfigError(f"reduction factor {self.reduction_factor}", "use 2..64 (16 is Pfeiffer's default)")


def config_from_dict(cls: type, params: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict (recipe YAML, CLI), rejecting unknown keys clearly."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}",
                          f"use some of: {', '.join(sorted(names))}")
    cfg = cls(**params)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def as_params(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


__all__ = ["TrainConfig", "FullConfig", "LoraConfig", "PromptConfig", "AdapterConfig", "config_from_dict",
           "as_params", "field"]
