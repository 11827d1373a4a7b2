"""The argument of the `prune:ARG` recipe step (registered by `llmpress.plan.steps`), a comma list of
`heads-25%`, `mlp-25%`, `structured-25%` (= heads and mlp), `layers-4`, `unstructured-50%`,
`global`, `2of4` and `recover-N` (recovery distillation steps), e.g. `prune:heads-25%,mlp-25%,recover-50`."""

from __future__ import annotations

from llmpress.compress.prune import PruneConfig
from llmpress.errors import ConfigError


def parse_prune_arg(arg: str | None) -> PruneConfig:
    """`heads-25%,mlp-25%,recover-50` -> PruneConfig (validated)."""
    if not arg:
        raise ConfigError("the prune recipe step needs an argument", "write e.g. prune:heads-25%,mlp-25%")
    cfg = PruneConfig(method="")
    for tok in (t.strip() for t in arg.split(",") if t.strip()):
        key, _, val = tok.partition("-")
        if key in ("heads", "mlp"):
            cfg.method = "structured"
            setattr(cfg, key, val)
        elif key == "structured":
            cfg.method, cfg.heads, cfg.mlp = "structured", val, val
        elif key == "layers":
            cfg.method = "layers"
            try:
                cfg.layers = int(val)
            except ValueError as e:
                raise ConfigError(f"prune recipe {tok!r}: {val!r} is not a layer count", "write layers-4") from e
        elif key == "unstructured":
            cfg.method, cfg.amount = "unstructured", val
        elif tok == "global":
            cfg.scope = "global"
        elif tok in ("2of4", "2:4", "nm"):
            cfg.method = "2:4"
        elif key == "recover":
            try:
                cfg.recover_steps = int(val)
            except ValueError as e:
                raise ConfigError(f"prune recipe {tok!r}: {val!r} is not a step count", "write recover-50") from e
        else:
            raise ConfigError(f"cannot read prune recipe option {tok!r}",
                              "use heads-25%, mlp-25%, structured-25%, layers-4, unstructured-50%, global, 2of4, recover-N")
    if not cfg.method:
        raise ConfigError(f"prune recipe {arg!r} names no method", "add heads-/mlp-/layers-/unstructured- or 2of4")
    return cfg.validate()
