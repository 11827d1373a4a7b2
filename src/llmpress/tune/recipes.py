"""Tuning recipes: methods applied one after another, each step's artifact the next one's base.

The seeds' combination "LoRA, then prompt tuning" is built in as `lora+prompt`; a YAML recipe
is a list of steps (or `{steps: [...]}`), each `{method: NAME, <method options>, <train options>}`.
LoRA-type steps are merged in memory before the next step trains, so any chain whose only
prompt-tuning step is last works; the chain of parents records every step.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from llmpress.artifact import Artifact
from llmpress.errors import ConfigError, NotFoundError
from llmpress.tune import get_method
from llmpress.tune.config import TrainConfig

BUILTIN_RECIPES: dict[str, list[dict[str, Any]]] = {
    "lora+prompt": [{"method": "lora"}, {"method": "prompt"}],
    "adapter+prompt": [{"method": "adapter"}, {"method": "prompt"}],
    "lora+adapter": [{"method": "lora"}, {"method": "adapter"}],
}


def load_recipe(spec: str) -> list[dict[str, Any]]:
    """A built-in recipe name or a YAML file; the steps are checked before anything trains."""
    if spec in BUILTIN_RECIPES:
        steps = [dict(s) for s in BUILTIN_RECIPES[spec]]
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise NotFoundError(f"recipe {spec!r} is neither a built-in ({', '.join(BUILTIN_RECIPES)}) nor a file",
                                "pass a built-in name or a YAML file")
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {path} is not valid YAML ({e})", "fix the file") from e
        steps = data.get("steps") if isinstance(data, dict) else data
        if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
            raise ConfigError(f"recipe {path} must be a non-empty list of steps ({{method: ...}})",
                              "write e.g. `- method: lora` then `- method: prompt`")
    for i, s in enumerate(steps):
        if "method" not in s:
            raise ConfigError(f"recipe step {i + 1} has no 'method'", "add method: lora|prompt|adapter|full")
        m = get_method(s["method"])
        if s["method"] == "prompt" and i != len(steps) - 1:
            raise ConfigError(f"recipe step {i + 1} is prompt tuning but not the last step",
                              "prompt tuning has no weights to merge, so it must come last")
        known = {f.name for f in fields(m.config)} | {f.name for f in fields(TrainConfig)} | {"method", "name"}
        unknown = sorted(set(s) - known)
        if unknown:
            raise ConfigError(f"recipe step {i + 1} ({s['method']}): unknown option(s) {', '.join(unknown)}",
                              "use the method's options or training options (lr, max_steps, ...)")
    return steps


def run_recipe(base: Artifact, steps: list[dict[str, Any]], data: str, train: TrainConfig | None = None,
               progress: Any = None, name: str | None = None) -> list[Artifact]:
    """Run every step in order; returns the artifacts made (the last is the recipe's result)."""
    from llmpress.tune.run import tune_artifact

    train = train or TrainConfig()
    train_names = {f.name for f in fields(TrainConfig)}
    made: list[Artifact] = []
    current = base
    for i, step in enumerate(steps):
        method = step["method"]
        m = get_method(method)
        method_params = {k: v for k, v in step.items() if k in {f.name for f in fields(m.config)}}
        step_train = replace(train, **{k: v for k, v in step.items() if k in train_names})
        step_name = step.get("name") or f"{name or base.name}-{'+'.join(s['method'] for s in steps[: i + 1])}"
        current = tune_artifact(current, method, data, method_params, step_train, name=step_name, progress=progress)
        made.append(current)
    return made
