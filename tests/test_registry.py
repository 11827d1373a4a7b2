"""Registry: lookups by id / prefix / name, lineage, rm refusing while children exist."""

from __future__ import annotations

import pytest

from llmpress.artifact import Step, create_artifact
from llmpress.errors import NotFoundError, RegistryError


def _make(name: str, parent=None):
    with create_artifact(name, Step("test"), parent=parent) as w:
        (w.path / "f.txt").write_text(name)
    return w.artifact


def test_lineage_and_lookup(fresh_registry) -> None:
    a = _make("base")
    b = _make("child", a)
    c = _make("grandchild", b)
    assert [m.name for m in fresh_registry.lineage(c.id)] == ["grandchild", "child", "base"]
    assert fresh_registry.get(c.id[:6]).id == c.id
    assert fresh_registry.get("child").id == b.id
    with pytest.raises(NotFoundError):
        fresh_registry.get("no-such-thing")


def test_rm_refuses_with_children_unless_recursive(fresh_registry) -> None:
    a = _make("base")
    b = _make("child", a)
    with pytest.raises(RegistryError, match="child"):
        fresh_registry.remove(a.id)
    assert a.path.exists()
    removed = fresh_registry.remove(a.id, recursive=True)
    assert set(removed) == {a.id, b.id}
    assert not a.path.exists() and not b.path.exists()
    assert fresh_registry.list() == []


def test_alembic_created_schema(fresh_registry) -> None:
    from sqlalchemy import inspect, text

    names = set(inspect(fresh_registry.engine).get_table_names())
    assert {"artifacts", "evaluations", "alembic_version"} <= names
    with fresh_registry.engine.connect() as c:
        assert c.execute(text("select version_num from alembic_version")).scalar()
