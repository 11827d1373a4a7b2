"""The one config object of the prune step, and parsing of amounts such as `25%` or `0.25`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llmpress.errors import ConfigError

METHOD_NAMES = ("unstructured", "structured", "2:4", "layers")


def parse_amount(value: float | str | None, what: str) -> float | None:
    """`25%`, `0.25` or 0.25 -> 0.25; None stays None; anything outside (0, 1) is a ConfigError."""
    if value is None:
        return None
    raw = value
    try:
        if isinstance(value, str):
            v = value.strip()
            value = float(v[:-1]) / 100.0 if v.endswith("%") else float(v)
        value = float(value)
    except ValueError as e:
        raise ConfigError(f"{what} amount {raw!r} is not a number", "write it as 25% or 0.25") from e
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{what} amount {raw!r} is outside (0, 1)",
                          "pass a fraction strictly between 0 and 1, e.g. 25% or 0.25")
    return value


@dataclass
class PruneConfig:
    """What to prune and how much. Fractions are of the parent's counts, in (0, 1)."""

    method: str = "structured"
    # unstructured: fraction of weights zeroed; scope "layer" (each Linear alone) or "global".
    amount: float | str | None = None
    scope: str = "layer"
    # structured: fraction of attention heads and of MLP intermediate neurons removed.
    heads: float | str | None = None
    mlp: float | str | None = None
    # structured: refit o_proj / down_proj to the parent's outputs on the calibration data (least squares).
    reconstruct: bool = True
    # layers: number of whole decoder layers dropped.
    layers: int | None = None
    # calibration data for importance, and how much of it.
    data: str = "builtin:pydoc"
    calibration_samples: int = 64
    seq_len: int = 256
    # optional recovery: distillation from the parent for this many optimizer steps.
    recover_steps: int = 0
    recover_lr: float = 5e-5
    recover_batch: int = 4
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> PruneConfig:
        """Normalise amounts to floats and reject impossible combinations before any work is done."""
        if self.method not in METHOD_NAMES:
            raise ConfigError(f"unknown prune method {self.method!r}", f"use one of {', '.join(METHOD_NAMES)}")
        self.amount = parse_amount(self.amount, "--amount")
        self.heads = parse_amount(self.heads, "--heads")
        self.mlp = parse_amount(self.mlp, "--mlp")
        if self.scope not in ("layer", "global"):
            raise ConfigError(f"unknown scope {self.scope!r}", "use --scope layer or --scope global")
        if self.method == "unstructured" and self.amount is None:
            raise ConfigError("unstructured pruning needs an amount", "pass --amount 50%")
        if self.method == "structured" and self.heads is None and self.mlp is None:
            raise ConfigError("structured pruning needs --heads and/or --mlp", "pass e.g. --heads 25% --mlp 25%")
        if self.method == "layers" and (self.layers is None or int(self.layers) < 1):
            raise ConfigError("layer pruning needs a positive number of layers to drop", "pass --layers 4")
        if self.recover_steps < 0:
            raise ConfigError(f"recover steps {self.recover_steps} is negative", "pass 0 (no recovery) or more")
        if self.recover_steps and self.method in ("unstructured", "2:4"):
            raise ConfigError(f"recovery after {self.method} pruning would refill the zeroed weights",
                              "use --recover with structured or layers pruning only")
        if self.calibration_samples < 1 or self.seq_len < 8:
            raise ConfigError("calibration needs at least 1 sample of at least 8 tokens",
                              "raise --calibration-samples / --seq-len")
        return self

    def params(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra", None)
        return d
