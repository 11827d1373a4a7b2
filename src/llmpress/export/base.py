"""The export-format table and the one export step shared by every format.

A format (like a quantize scheme) is a config dataclass, a `write(source, config, dest,
progress)` that fills a directory with files the target runtime loads unchanged, and a
`verify(dest, source, config)` that loads those files with that runtime (or, where the
runtime is an optional extra that is absent, with the format's reference reader) and
compares them with the source. `export(artifact, config)` runs both inside a temporary
directory and only then renames it into place as a child artifact (parent = source).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llmpress.artifact import Artifact, Step, create_artifact
from llmpress.errors import ConfigError, LlmpressError
from llmpress.methods import MethodTable

FORMATS: MethodTable[ExportFormat] = MethodTable(
    "export format", param="format", modules=[f"llmpress.export.{m}" for m in ("onnx", "gguf", "triton")])


@dataclass
class ExportConfig:
    """Knobs every format shares; formats subclass it with their own."""

    precision: str = "fp32"

    def validate(self) -> None:  # noqa: B027 - formats override
        pass

    def params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportFormat:
    name: str
    config_cls: type[ExportConfig]
    # write(source, config, dest, progress) -> facts for the manifest
    write: Callable[..., dict[str, Any]]
    # verify(dest, source, config, facts) -> verification facts; raises ExportError when an exact export differs
    verify: Callable[..., dict[str, Any]]
    precisions: tuple[str, ...]
    loader: str
    summary: str
    # python modules the export needs, with the extra that installs them
    requires: tuple[str, ...] = ()
    extra: str = ""
    aliases: dict[str, str] = field(default_factory=dict)


class ExportError(ConfigError):
    """An export that cannot be made or that does not reproduce its source."""


def register_format(fmt: ExportFormat) -> ExportFormat:
    return FORMATS.register(fmt.name, fmt)


def get_format(name: str) -> ExportFormat:
    return FORMATS.get_method(name)


def make_config(name: str, **overrides: Any) -> ExportConfig:
    """The format's config with `overrides` (None values ignored); unknown knobs and precisions are errors."""
    fmt = get_format(name)
    known = {f.name for f in fields(fmt.config_cls)}
    bad = [k for k, v in overrides.items() if v is not None and k not in known]
    if bad:
        raise ConfigError(f"export format {name!r} has no option {', '.join(bad)}",
                          f"its options are: {', '.join(sorted(known))}")
    cfg = fmt.config_cls(**{k: v for k, v in overrides.items() if v is not None})
    cfg.precision = fmt.aliases.get(cfg.precision, cfg.precision)
    if cfg.precision not in fmt.precisions:
        raise ConfigError(f"export format {name!r} has no precision {cfg.precision!r}",
                          f"use one of: {', '.join(fmt.precisions)}"
                          + (f" (aliases: {', '.join(f'{k}={v}' for k, v in fmt.aliases.items())})"
                             if fmt.aliases else ""), param="precision")
    cfg.validate()
    return cfg


def format_name_of(config: ExportConfig) -> str:
    for name, f in FORMATS.items():
        if type(config) is f.config_cls:
            return name
    raise ConfigError(f"{type(config).__name__} is not a registered export config", "use make_config(name)")


def check_runtime(fmt: ExportFormat) -> None:
    """A missing optional runtime is one clear error before any work."""
    missing = [m for m in fmt.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"export to {fmt.name} needs the python package(s) {', '.join(missing)}, "
                          "which are not installed", f"pip install 'llmpress[{fmt.extra}]'")


def check_source(src: Artifact) -> dict[str, Any]:
    """Exports start from a model in Hugging Face layout (float or llmpress-quantized); returns its config."""
    from llmpress.sources.hf import read_config

    if src.manifest.format != "hf":
        raise ExportError(f"{src.name} is a {src.manifest.format} artifact, not a model in Hugging Face layout",
                          "export its hf parent (adapters: `llmpress tune merge` first)")
    cfg = read_config(src.path)
    archs = cfg.get("architectures") or []
    if not archs or not archs[0].endswith("ForCausalLM"):
        raise ExportError(f"{src.name} has architecture {archs[0] if archs else 'unknown'!r}; "
                          "exports handle causal LMs (*ForCausalLM)", "export a causal language model")
    return cfg


def export(src: Artifact, config: ExportConfig, out: Path | None = None, name: str | None = None,
           progress: Any = None) -> Artifact:
    """Export `src` with `config` into a new registered artifact whose parent is `src`, verified first."""
    fmt = FORMATS[format_name_of(config)]
    config.validate()
    check_runtime(fmt)
    if out is not None:
        out = Path(out).expanduser()
        if out.exists():
            raise ConfigError(f"output directory {out} already exists", "pass a new --out path or remove it")
    check_source(src)
    params = config.params()
    step = Step("export", {"format": fmt.name, "source": src.id, **params})
    with create_artifact(name or f"{src.name}-{fmt.name}-{config.precision}", step, parent=src,
                         format=fmt.name, loader=fmt.loader, dest=out) as w:
        facts = fmt.write(src, config, w.path, progress)
        task = progress.add_task(f"verify {fmt.name} against {src.name}", total=None) if progress else None
        try:
            verification = fmt.verify(w.path, src, config, facts)
        except LlmpressError:
            raise
        except Exception as e:  # noqa: BLE001 - a runtime's own exception: the export is unusable
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"the exported {fmt.name} files do not load back in their runtime ({first})",
                              "nothing was written; report this with the model's config.json") from e
        if progress is not None:
            progress.update(task, total=1, completed=1)
        w.manifest.extra["export"] = {"format": fmt.name, "precision": config.precision, "params": params,
                                      "source": {"id": src.id, "name": src.name}, **facts,
                                      "verification": verification}
    assert w.artifact is not None
    return w.artifact

