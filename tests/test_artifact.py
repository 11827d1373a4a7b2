"""Artifacts: atomic writes, manifest contents, hash verification, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmpress.artifact import MANIFEST, Artifact, Step, create_artifact
from llmpress.errors import IntegrityError, ManifestError, NotFoundError


def _write(dest: Path | None = None, fail: bool = False, parent: Artifact | None = None) -> Artifact:
    with create_artifact("demo", Step("test", {"k": 1}), parent=parent, dest=dest) as w:
        (w.path / "config.json").write_text("{}")
        (w.path / "weights.bin").write_bytes(b"\x00\x01" * 100)
        if fail:
            raise RuntimeError("step failed half-way")
    assert w.artifact is not None
    return w.artifact


def test_manifest_has_every_field_and_hashes(fresh_registry) -> None:
    art = _write()
    data = json.loads((art.path / MANIFEST).read_text())
    for key in ("id", "name", "format", "parent", "step", "metrics", "created_at", "files_sha256"):
        assert key in data
    assert data["step"] == {"name": "test", "params": {"k": 1}}
    assert set(data["files_sha256"]) == {"config.json", "weights.bin"}
    assert Artifact.open(art.path).id == art.id
    assert fresh_registry.get(art.id).name == "demo"


def test_failed_step_leaves_nothing(fresh_registry, tmp_path: Path) -> None:
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(RuntimeError):
        _write(dest=tmp_path / "x", fail=True)
    assert {p.name for p in tmp_path.iterdir()} == before
    assert fresh_registry.list() == []


def test_tampered_file_is_named(fresh_registry) -> None:
    art = _write()
    (art.path / "weights.bin").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match="weights.bin"):
        Artifact.open(art.path)


def test_missing_and_corrupt_manifest(fresh_registry, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        Artifact.open(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    with pytest.raises(ManifestError, match="no llmpress.json"):
        Artifact.open(tmp_path / "m")
    (tmp_path / "m" / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="corrupt"):
        Artifact.open(tmp_path / "m")
    (tmp_path / "m" / MANIFEST).write_text('{"name": "no id"}')
    with pytest.raises(ManifestError, match="malformed"):
        Artifact.open(tmp_path / "m")


def test_record_metrics_updates_manifest_and_registry(fresh_registry) -> None:
    art = _write()
    art.record_metrics("quality", {"perplexity": 12.5})
    assert json.loads((art.path / MANIFEST).read_text())["metrics"]["quality"]["perplexity"] == 12.5
    assert fresh_registry.get(art.id).metrics["quality"]["perplexity"] == 12.5
    Artifact.open(art.path)  # the manifest rewrite does not break verification


def test_overwrite_replaces_files_and_registry_row(fresh_registry, tmp_path: Path) -> None:
    old = _write(dest=tmp_path / "model")
    fresh_registry.add_evaluation(old, "demo-set", "quality", {"perplexity": 3.0})
    new = _write(dest=tmp_path / "model")
    assert new.id != old.id and Artifact.open(tmp_path / "model").id == new.id
    assert fresh_registry.get(new.id).path == str(tmp_path / "model")
    with pytest.raises(NotFoundError):  # the old row described files that no longer exist
        fresh_registry.get(old.id)
    assert fresh_registry.evaluations(old.id) == []
    assert [p.name for p in tmp_path.iterdir() if "model" in p.name] == ["model"]  # no aside or temp dir left


def test_failed_overwrite_keeps_the_old_artifact(fresh_registry, tmp_path: Path, monkeypatch) -> None:
    old = _write(dest=tmp_path / "model")
    with pytest.raises(RuntimeError):  # the step fails
        _write(dest=tmp_path / "model", fail=True)
    # the registry write fails after the new files are in place: a registry from a newer llmpress
    import sqlite3

    db = tmp_path / "newer.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        c.execute("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    monkeypatch.setenv("LLMPRESS_DATABASE_URL", f"sqlite:///{db}")
    with pytest.raises(Exception, match="9999_from_the_future"):
        _write(dest=tmp_path / "model")
    monkeypatch.undo()
    assert Artifact.open(tmp_path / "model").id == old.id  # files intact, hashes verified
    assert [p.name for p in tmp_path.iterdir() if "model" in p.name] == ["model"]
