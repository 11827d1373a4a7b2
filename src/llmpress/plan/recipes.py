"""Recipes: named steps composed with `+` (e.g. `prune:heads-25%+int8-weight-only`).

One table maps a step name to a function `(artifact, arg, ctx) -> artifact`. Quantization
schemes are added from `llmpress.compress.quantize`'s table; other steps (pruning,
distillation) are registered with `register_recipe` by a plan module listed in
`RECIPE_MODULES`, imported lazily. Stages never import plan: plan adapts them.

Step syntax: `NAME` or `NAME:ARG`. For quantization steps ARG is a comma list of
`gNN` (group size), `gptq` / `rtn` (int4 method) or `key=value` for any config field.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from llmpress.artifact import Artifact
from llmpress.errors import ConfigError

StepFn = Callable[[Artifact, str | None, "RecipeContext"], Artifact]

# Modules that register recipe steps when imported (other engineers' stages add theirs here).
RECIPE_MODULES = ("llmpress.plan.steps",)


@dataclass
class RecipeContext:
    """What every step may use: the corpus, calibration size, a progress display."""

    data: str = "builtin:pydoc"
    calibration_samples: int = 32
    calibration_seq_len: int = 128
    qat_steps: int = 60
    progress: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecipeStep:
    name: str
    fn: StepFn
    summary: str
    arg_help: str = ""


RECIPES: dict[str, RecipeStep] = {}


def register_recipe(name: str, summary: str, arg_help: str = "") -> Callable[[StepFn], StepFn]:
    """Decorator: make `name` (and `name:ARG`) usable in recipes."""

    def deco(fn: StepFn) -> StepFn:
        RECIPES[name] = RecipeStep(name, fn, summary, arg_help)
        return fn

    return deco


def _load_recipe_modules() -> None:
    _register_quantize()
    for mod in RECIPE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not mod.startswith(e.name):
                raise


def recipe_table() -> dict[str, RecipeStep]:
    _load_recipe_modules()
    return RECIPES


def split_recipes(text: str) -> list[str]:
    """A comma-separated recipe list; a comma followed by a step option (not a step name) stays
    inside its recipe, so `int8-weight-only,int4-weight-only:g64,gptq` is two recipes."""
    table = recipe_table()
    out: list[str] = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        first = tok.split("+")[0].partition(":")[0]
        if out and first not in table:
            out[-1] += "," + tok
        else:
            out.append(tok)
    return out


def parse_recipe(text: str) -> list[tuple[str, str | None]]:
    """`a:x+b` -> [("a", "x"), ("b", None)], each name checked against the table."""
    table = recipe_table()
    steps: list[tuple[str, str | None]] = []
    for part in text.split("+"):
        part = part.strip()
        if not part:
            raise ConfigError(f"recipe {text!r} has an empty step", "join steps with a single '+'")
        name, sep, arg = part.partition(":")
        if name not in table:
            raise ConfigError(f"unknown recipe step {name!r} in {text!r}",
                              f"use one of: {', '.join(sorted(table))}", param="recipes")
        steps.append((name, arg if sep else None))
    return steps


def run_recipe(text: str, source: Artifact, ctx: RecipeContext) -> Artifact:
    """Apply the steps of one recipe in order; each output is the next step's input."""
    table = recipe_table()
    art = source
    for name, arg in parse_recipe(text):
        art = table[name].fn(art, arg, ctx)
    return art


def _coerce(value: str, typ: Any, key: str) -> Any:
    t = str(typ)
    try:
        if "bool" in t:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        if "int" in t and "float" not in t:
            return int(value)
        if "float" in t:
            return float(value)
        if "tuple" in t:
            return tuple(v for v in value.split("|") if v)
    except ValueError as e:
        raise ConfigError(f"recipe option {key}={value!r} is not a valid {t}", f"fix {key}=...") from e
    return value


def quant_options(scheme: str, arg: str | None, ctx: RecipeContext) -> dict[str, Any]:
    """Recipe ARG -> config overrides for a quantization scheme, with the run's corpus defaults."""
    from llmpress.compress.quantize import get_scheme

    cls = get_scheme(scheme).config_cls
    types = {f.name: f.type for f in fields(cls)}
    opts: dict[str, Any] = {}
    if "calibration" in types and scheme == "int8-static":
        opts.update(calibration=ctx.data, samples=ctx.calibration_samples, seq_len=ctx.calibration_seq_len)
    if scheme == "qat":
        opts.update(data=ctx.data, steps=ctx.qat_steps)
    for tok in (arg or "").split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok[0] == "g" and tok[1:].isdigit() and "group_size" in types:
            opts["group_size"] = int(tok[1:])
        elif tok in ("gptq", "rtn") and "method" in types:
            opts["method"] = tok
            if tok == "gptq":
                opts.update(calibration=ctx.data, samples=ctx.calibration_samples, seq_len=ctx.calibration_seq_len)
        elif "=" in tok:
            k, _, v = tok.partition("=")
            if k not in types:
                raise ConfigError(f"scheme {scheme!r} has no option {k!r}", f"its options: {', '.join(types)}")
            opts[k] = _coerce(v, types[k], k)
        else:
            raise ConfigError(f"cannot read recipe option {tok!r} for {scheme}",
                              "use gNN, gptq, rtn or key=value (e.g. int4-weight-only:g64,gptq)")
    return opts


def _register_quantize() -> None:
    from llmpress.compress.quantize import SCHEMES, make_config, quantize, scheme_names

    scheme_names()
    for scheme, info in SCHEMES.items():
        if scheme in RECIPES:
            continue

        def step(art: Artifact, arg: str | None, ctx: RecipeContext, _scheme: str = scheme) -> Artifact:
            cfg = make_config(_scheme, **quant_options(_scheme, arg, ctx))
            label = _scheme + (f"-{arg.replace(',', '-').replace('=', '')}" if arg else "")
            return quantize(art, cfg, progress=ctx.progress, name=f"{art.name}-{label}")

        RECIPES[scheme] = RecipeStep(scheme, step, info.summary, "gNN, gptq|rtn, key=value")
