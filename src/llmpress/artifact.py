"""Artifacts: a model directory in Hugging Face layout plus one manifest, `llmpress.json`.

Every step reads an artifact and writes a new one whose `parent` is the input, so the
chain of parents (lineage) says how any model was made and what it scored. Writes are
atomic: files land in a temporary sibling directory that is renamed into place only
after the manifest, with the sha256 of every file, has been written.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmpress.errors import IntegrityError, ManifestError, NotFoundError

MANIFEST = "llmpress.json"
FORMATS = ("hf", "onnx", "adapter", "gguf", "triton")


def home() -> Path:
    """`$LLMPRESS_HOME`, default `~/.llmpress`: registry, cached models and artifacts live here."""
    root = Path(os.environ.get("LLMPRESS_HOME", Path.home() / ".llmpress")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def artifacts_dir() -> Path:
    d = home() / "artifacts"
    d.mkdir(parents=True, exist_ok=True)
    return d


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` except the manifest, keyed by relative posix path."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


@dataclass
class Step:
    """The step that produced an artifact and its parameters (JSON-serialisable)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    id: str
    name: str
    format: str = "hf"
    parent: str | None = None
    step: Step = field(default_factory=lambda: Step("source"))
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    files_sha256: dict[str, str] = field(default_factory=dict)
    # How to rebuild the runnable model: "hf" (plain from_pretrained) or a plugin
    # name registered with `register_loader` (e.g. "quantized", "adapter").
    loader: str = "hf"
    # Free-form facts a loader needs (quantization scheme, base model id, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> Manifest:
        try:
            step = data.get("step") or {"name": "source"}
            return cls(
                id=str(data["id"]),
                name=str(data["name"]),
                format=str(data.get("format", "hf")),
                parent=data.get("parent"),
                step=Step(str(step["name"]), dict(step.get("params") or {})),
                metrics=dict(data.get("metrics") or {}),
                created_at=str(data.get("created_at", "")),
                files_sha256=dict(data.get("files_sha256") or {}),
                loader=str(data.get("loader", "hf")),
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ManifestError(
                f"manifest {where} is missing or has a malformed field ({e})",
                "restore the artifact from its parent or re-run the step that made it",
            ) from e


# Loader plugins: stages to the right of this module (sources, quantize, tune, export) register how
# their artifacts become runnable models. The table maps loader name -> module to import,
# so this module never imports them at start-up.
_LOADER_MODULES: dict[str, str] = {
    "hf": "llmpress.sources.hf",  # plain from_pretrained; also registers the "tokenizer" loader
    "tokenizer": "llmpress.sources.hf",
    "quantized": "llmpress.compress.quantize",
    "adapter": "llmpress.tune.adapters",
    "onnx": "llmpress.engine.backends.ort",
    "triton": "llmpress.engine.backends.ort",
    "gguf": "llmpress.engine.backends.llamacpp",
}
_LOADERS: dict[str, Callable[..., Any]] = {}


def register_loader(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _LOADERS[name] = fn
        return fn

    return deco


def _loader(name: str, where: Path) -> Callable[..., Any]:
    if name not in _LOADERS and name in _LOADER_MODULES:
        importlib.import_module(_LOADER_MODULES[name])
    if name not in _LOADERS:
        raise ManifestError(f"artifact {where} needs loader {name!r}, which this llmpress does not have",
                            "upgrade llmpress or install the extra that provides it")
    return _LOADERS[name]


class Artifact:
    """An artifact on disk. `external` ones (a user's HF directory) are never written to."""

    def __init__(self, path: Path, manifest: Manifest, external: bool = False) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.external = external

    def __repr__(self) -> str:
        return f"Artifact({self.manifest.name!r}, id={self.id}, path={str(self.path)!r})"

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def name(self) -> str:
        return self.manifest.name

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Artifact:
        """Open an artifact directory; with `verify`, check every file against its sha256."""
        path = Path(path)
        if not path.exists():
            raise NotFoundError(f"artifact path {path} does not exist", "check the path or run `llmpress artifacts list`")
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise ManifestError(
                f"{path} has no {MANIFEST} manifest",
                "open it as a model source (`llmpress eval PATH`) or re-create the artifact",
            )
        try:
            data = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"manifest {mpath} is corrupt ({e.__class__.__name__}: {e})",
                                "restore the file or re-run the step that made this artifact") from e
        if not isinstance(data, dict):
            raise ManifestError(f"manifest {mpath} is not a JSON object", "restore the file or re-create the artifact")
        art = cls(path, Manifest.from_dict(data, mpath))
        if verify:
            art.verify()
        return art

    def verify(self) -> None:
        """Raise IntegrityError naming the first file that is missing or whose hash differs."""
        for rel, digest in self.manifest.files_sha256.items():
            p = self.path / rel
            if not p.is_file():
                raise IntegrityError(f"artifact {self.path}: file {rel} listed in the manifest is missing",
                                     "restore it or re-run the step that made this artifact")
            if sha256_file(p) != digest:
                raise IntegrityError(f"artifact {self.path}: {rel} does not match its sha256 in {MANIFEST}",
                                     "the file was changed or truncated; restore it or re-create the artifact")

    # -- contents --------------------------------------------------------------------
    def files(self) -> list[Path]:
        return [p for p in sorted(self.path.rglob("*")) if p.is_file()]

    def bytes_on_disk(self) -> int:
        """Bytes of the model files (manifest excluded): what a deployment has to ship."""
        return sum(p.stat().st_size for p in self.files() if p.name != MANIFEST)

    def load_model(self, **kwargs: Any) -> Any:
        """Rebuild the runnable torch model with the loader the manifest names."""
        return _loader(self.manifest.loader, self.path)(self, **kwargs)

    def load_tokenizer(self) -> Any:
        """The tokenizer saved with the model (an adapter's comes from its base)."""
        return _loader("tokenizer", self.path)(self)

    # -- metrics ---------------------------------------------------------------------
    def record_metrics(self, section: str, values: dict[str, Any]) -> None:
        """Merge `values` into metrics[section], on the manifest (atomically) and in the registry."""
        self.manifest.metrics.setdefault(section, {}).update(values)
        if not self.external:
            tmp = self.path / (MANIFEST + ".tmp")
            tmp.write_text(self.manifest.to_json())
            os.replace(tmp, self.path / MANIFEST)
        from llmpress.registry import get_registry

        get_registry().update_metrics(self)

    def lineage(self) -> list[Manifest]:
        """This artifact and its ancestors, newest first, as far as the registry knows them."""
        from llmpress.registry import get_registry

        return get_registry().lineage(self.id)


@contextlib.contextmanager
def create_artifact(
    name: str,
    step: Step,
    parent: Artifact | None = None,
    format: str = "hf",
    loader: str = "hf",
    dest: Path | None = None,
    register: bool = True,
) -> Iterator[ArtifactWriter]:
    """Write a new artifact atomically.

    Yields a writer whose `.path` is a temporary directory; fill it, then on a clean exit
    the manifest is written with file hashes, the directory is renamed to its final place
    and the artifact is recorded in the registry. On any exception nothing is left behind.
    Overwriting `dest` moves the old directory aside until the new one is in place and registered
    (then deletes it, and its registry row with it); a failure puts the old one back.
    """
    if format not in FORMATS:
        raise ManifestError(f"unknown artifact format {format!r}", f"use one of {', '.join(FORMATS)}")
    final = Path(dest) if dest is not None else artifacts_dir() / new_id()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    manifest = Manifest(
        id=final.name if dest is None else new_id(),
        name=name,
        format=format,
        parent=parent.id if parent is not None else None,
        step=step,
        loader=loader,
    )
    writer = ArtifactWriter(tmp, manifest)
    replaced = _artifact_id_at(final)
    aside: Path | None = None
    try:
        yield writer
        manifest.files_sha256 = hash_tree(tmp)
        (tmp / MANIFEST).write_text(manifest.to_json())
        if final.exists():  # overwrite: move the old directory aside first, delete it only at the end
            aside = final.parent / f".{final.name}.old-{new_id()}"
            os.replace(final, aside)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _restore(aside, final)
        raise
    writer.artifact = Artifact(final, manifest)
    if register:
        from llmpress.registry import get_registry

        try:
            # One transaction: the new row in, the overwritten artifact's row (its files are gone) out.
            get_registry().add_artifact(writer.artifact, replaces=replaced)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            _restore(aside, final)
            raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _artifact_id_at(path: Path) -> str | None:
    """The id in the manifest of an artifact already at `path` (what an overwrite replaces), if any."""
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return str(data["id"]) if isinstance(data, dict) and data.get("id") else None


def _restore(aside: Path | None, final: Path) -> None:
    """Put an overwritten artifact back where it was after a failed overwrite."""
    if aside is None:
        return
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    os.replace(aside, final)


class ArtifactWriter:
    """Handle given to a step while it fills a new artifact's temporary directory."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self.artifact: Artifact | None = None
