"""The argument of the `distill:ARG` recipe step (registered by `llmpress.plan.steps`), a comma
list of `layers-N` or `layers-50%` (student = N / that share of the teacher's layers, spread evenly), `steps-N`,
`alpha-0.5`, `T-2`; e.g. `distill:layers-50%,steps-100`. The input artifact is the teacher."""

from __future__ import annotations

from llmpress.compress.distill import DistillConfig
from llmpress.errors import ConfigError


def parse_distill_arg(arg: str | None, teacher_layers: int) -> DistillConfig:
    cfg = DistillConfig(student_layers=max(1, teacher_layers // 2))
    for tok in (t.strip() for t in (arg or "").split(",") if t.strip()):
        key, _, val = tok.partition("-")
        try:
            if key == "layers":
                if val.endswith("%"):
                    cfg.student_layers = max(1, round(teacher_layers * float(val[:-1]) / 100))
                else:
                    cfg.student_layers = int(val)
            elif key == "steps":
                cfg.steps = int(val)
            elif key == "alpha":
                cfg.alpha = float(val)
            elif key in ("T", "temperature"):
                cfg.temperature = float(val)
            else:
                raise ConfigError(f"cannot read distill recipe option {tok!r}", "use layers-N|P%, steps-N, alpha-A, T-T")
        except ValueError as e:
            raise ConfigError(f"distill recipe option {tok!r} has a bad number", "e.g. distill:layers-50%,steps-100") from e
    return cfg.validate()
