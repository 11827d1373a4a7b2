"""Adapters: a damaged base is reported as damaged, not as missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmpress.artifact import MANIFEST, Artifact, Step, create_artifact
from llmpress.errors import IntegrityError, NotFoundError
from llmpress.tune.adapters import base_fingerprint, parent_of


def _adapter_on_copy_of(tiny, tmp_path: Path) -> tuple[Artifact, Artifact]:
    with create_artifact("base-copy", Step("copy"), dest=tmp_path / "base") as w:
        for f in tiny.files():
            if f.name != MANIFEST:
                shutil.copy(f, w.path / f.name)
    base = w.artifact
    assert base is not None
    with create_artifact("ad", Step("tune", {"method": "lora"}), parent=base, format="adapter",
                         loader="adapter") as a:
        (a.path / "adapter_config.json").write_text("{}")
        a.manifest.extra["base"] = base_fingerprint(base)
    assert a.artifact is not None
    return base, a.artifact


def test_tampered_base_is_an_integrity_error(tiny, fresh_registry, tmp_path: Path) -> None:
    base, adapter = _adapter_on_copy_of(tiny, tmp_path)
    assert parent_of(adapter).id == base.id
    weights = next(p for p in base.path.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(IntegrityError, match=weights.name):
        parent_of(adapter)


def test_missing_base_is_not_found(tiny, fresh_registry, tmp_path: Path) -> None:
    base, adapter = _adapter_on_copy_of(tiny, tmp_path)
    shutil.rmtree(base.path)  # the registry row stays, its directory is gone
    with pytest.raises(NotFoundError, match="restore the base|is not in the registry"):
        parent_of(adapter)
