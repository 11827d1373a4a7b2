"""Model sources: `builtin:NAME`, an artifact id or name, a local HF directory, a .gguf, a hub id."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from llmpress.artifact import MANIFEST, Artifact, Manifest, Step
from llmpress.errors import NotFoundError, OfflineError, SourceError
from llmpress.sources.builtin import BUILTINS, load_builtin, models_dir

__all__ = ["resolve", "BUILTINS", "load_builtin"]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def resolve(spec: str) -> Artifact:
    """Turn what a user typed into an artifact (converting and caching where needed)."""
    spec = spec.strip()
    if not spec:
        raise NotFoundError("no model given", "pass builtin:smollm2-135m, an artifact id, a directory or a .gguf")
    if spec.startswith("builtin:"):
        return load_builtin(spec.removeprefix("builtin:"))
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(path)
    from llmpress.registry import get_registry
    from llmpress.registry.ops import alias_target

    target = alias_target(get_registry(), spec) if ALIAS.match(spec) else None
    if target is not None:  # an alias (prod, canary...) names the artifact it points at now
        try:
            return Artifact.open(get_registry().get(target).path)
        except NotFoundError:
            raise NotFoundError(f"alias {spec!r} points at artifact {target}, which is no longer in the registry",
                                f"`llmpress rollback {spec}` or `llmpress deploy ARTIFACT --alias {spec}`") from None
    try:
        row = get_registry().get(spec)
    except NotFoundError:
        row = None
    if row is not None:
        return Artifact.open(row.path)
    if HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _from_hub(spec)
    raise NotFoundError(f"model {spec!r} is not a path, an alias, a registered artifact, a built-in or a hub id",
                        "see `llmpress models list` for what is available")


def _from_path(path: Path) -> Artifact:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SourceError(f"{path} is a file but not a .gguf", "pass a model directory or a .gguf file")
        from llmpress.sources.gguf import convert_gguf

        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
        dest = models_dir() / f"gguf-{path.stem}-{digest}"
        if (dest / MANIFEST).is_file():
            return Artifact.open(dest)
        return convert_gguf(path, path.stem, dest)
    if (path / MANIFEST).is_file():
        return Artifact.open(path)
    if not (path / "config.json").is_file():
        raise SourceError(f"{path} is neither an llmpress artifact nor a Hugging Face model directory (no config.json)",
                          "point at a directory with config.json and weights, or a .gguf file")
    # A user's own HF directory: used in place, never written to; metrics go to the registry.
    real = path.resolve()
    manifest = Manifest(id="ext-" + hashlib.sha256(str(real).encode()).hexdigest()[:12], name=real.name,
                        step=Step("source", {"path": str(real)}))
    return Artifact(real, manifest, external=True)


def _from_hub(repo_id: str) -> Artifact:
    """The real hub path: from_pretrained, then cached as an artifact. Offline -> one clear line."""
    import os

    from llmpress.artifact import create_artifact
    from llmpress.sources.hf import quiet_hf, save_model

    dest = models_dir() / ("hub--" + repo_id.replace("/", "--"))
    if (dest / MANIFEST).is_file():
        return Artifact.open(dest)
    quiet_hf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(repo_id)
        model = AutoModelForCausalLM.from_pretrained(repo_id)
    except Exception as e:  # noqa: BLE001 - hub failures come in many classes; all mean "not reachable"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(e).lower() or "connect" in str(e).lower()
        if offline or "resolve" in str(e).lower():
            raise OfflineError(f"cannot download {repo_id!r}: this machine is offline (no Hugging Face hub access)",
                               "download the model elsewhere and pass its local directory or .gguf path") from e
        raise SourceError(f"could not load {repo_id!r} from the hub: {str(e).splitlines()[0]}",
                          "check the id, or pass a local directory") from e
    with create_artifact(repo_id, Step("source", {"hub_id": repo_id}), dest=dest) as w:
        save_model(model, tok, w.path)
    assert w.artifact is not None
    return w.artifact
