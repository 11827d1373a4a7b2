"""The scheme table and the one quantize step shared by every scheme.

A scheme (PEFT-tuners style) is a config dataclass, a `transform(model, tokenizer, config,
progress)` that swaps layers in place, and a stated storage format. `quantize(artifact,
config)` loads the float model, transforms it, writes a new artifact (parent = input)
atomically and returns it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from llmpress.artifact import Artifact, Step, create_artifact
from llmpress.errors import ConfigError
from llmpress.methods import MethodTable

# name -> Scheme; each scheme module registers itself, and is imported on the first lookup.
SCHEMES: MethodTable[Scheme] = MethodTable(
    "quantization scheme", param="scheme",
    modules=[f"llmpress.compress.quantize.{m}" for m in ("half", "int8_dynamic", "int8_weight_only",
                                                         "int4_weight_only", "int8_static", "qat")])


@dataclass
class QuantConfig:
    """Knobs every scheme shares; schemes subclass it with their own."""

    # Decoder Linear layers are always quantized; `lm_head` (and a tied embedding) only when True.
    lm_head: bool = True

    def validate(self) -> None:  # noqa: B027 - schemes override
        pass

    def params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scheme:
    name: str
    config_cls: type[QuantConfig]
    # transform(model, tokenizer, config, progress) swaps layers in place; may return facts for the manifest.
    transform: Callable[..., dict[str, Any] | None]
    storage: str
    summary: str
    # "quantized" (storage.py format) or "hf": fp16 / bf16 save a plain save_pretrained checkpoint.
    loader: str = "quantized"
    # {"trains": True} runs transform with autograd enabled (qat).
    extra: dict[str, Any] = field(default_factory=dict)


def register_scheme(scheme: Scheme) -> Scheme:
    return SCHEMES.register(scheme.name, scheme)


def get_scheme(name: str) -> Scheme:
    return SCHEMES.get_method(name)


def make_config(name: str, **overrides: Any) -> QuantConfig:
    """The scheme's config with `overrides` (None values ignored); unknown knobs are a ConfigError."""
    scheme = get_scheme(name)
    known = {f.name for f in fields(scheme.config_cls)}
    bad = [k for k, v in overrides.items() if v is not None and k not in known]
    if bad:
        raise ConfigError(f"scheme {name!r} has no option {', '.join(bad)}",
                          f"its options are: {', '.join(sorted(known))}")
    cfg = scheme.config_cls(**{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    return cfg


def scheme_name_of(config: QuantConfig) -> str:
    for name, s in SCHEMES.items():
        if type(config) is s.config_cls:
            return name
    raise ConfigError(f"{type(config).__name__} is not a registered scheme config", "use make_config(name)")


@dataclass
class Quantized:
    """A quantized model still in memory, with what is needed to save it."""

    source: Artifact
    scheme: Scheme
    config: QuantConfig
    model: Any
    tokenizer: Any
    facts: dict[str, Any] = field(default_factory=dict)


def build_quantized(artifact: Artifact, config: QuantConfig, progress: Any = None) -> Quantized:
    """Load `artifact` in float32 and quantize it in memory (kernel layouts ready)."""
    import torch

    from llmpress.compress.quantize.storage import prepare_all

    config.validate()
    scheme = SCHEMES[scheme_name_of(config)]
    if artifact.manifest.loader == "quantized":
        raise ConfigError(f"{artifact.name} is already quantized "
                          f"({artifact.manifest.extra.get('quantization', {}).get('scheme')})",
                          "quantize its float parent instead")
    model = artifact.load_model(dtype=torch.float32)
    tokenizer = artifact.load_tokenizer()
    with torch.no_grad() if not scheme.extra.get("trains") else torch.enable_grad():
        facts = scheme.transform(model, tokenizer, config, progress) or {}
    model.eval()
    return Quantized(artifact, scheme, config, prepare_all(model), tokenizer, facts)


def save_quantized_artifact(q: Quantized, name: str | None = None) -> Artifact:
    """Write a quantized model as a new registered artifact (parent = its source), atomically."""
    from llmpress.compress.quantize.storage import save_quantized
    from llmpress.sources.hf import save_model

    params = q.config.params()
    step = Step("quantize", {"scheme": q.scheme.name, **params})
    with create_artifact(name or f"{q.source.name}-{q.scheme.name}", step, parent=q.source,
                         loader=q.scheme.loader) as w:
        if q.scheme.loader == "hf":
            save_model(q.model, q.tokenizer, w.path)
            w.manifest.extra["quantization"] = {"scheme": q.scheme.name, "params": params}
        else:
            w.manifest.extra["quantization"] = save_quantized(q.model, q.tokenizer, w.path, q.scheme.name, params)
        if q.facts:
            w.manifest.extra["quantization"]["facts"] = q.facts
    assert w.artifact is not None
    return w.artifact


def quantize(artifact: Artifact, config: QuantConfig, progress: Any = None, name: str | None = None) -> Artifact:
    """Quantize `artifact` with `config` into a new registered artifact whose parent is the input."""
    return save_quantized_artifact(build_quantized(artifact, config, progress), name)
