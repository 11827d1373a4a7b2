"""The registry: an SQL index of artifacts and evaluations (later: deployments, keys, usage).

SQLite at `$LLMPRESS_HOME/registry.db` by default; any SQLAlchemy URL through
`LLMPRESS_DATABASE_URL` (PostgreSQL when several servers share it). The schema is
created and upgraded by Alembic on first use.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from llmpress.artifact import Artifact, Manifest, home
from llmpress.errors import NotFoundError, RegistryError
from llmpress.registry.tables import ArtifactRow, Base, EvaluationRow

__all__ = ["Registry", "get_registry", "database_url", "Base"]


def database_url() -> str:
    url = os.environ.get("LLMPRESS_DATABASE_URL")
    return url if url else f"sqlite:///{home() / 'registry.db'}"


def _migrate(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(Path(__file__).with_name("alembic.ini")))
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Registry:
    """Queries over the registry tables. One instance per database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):

            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA journal_mode=WAL")
                cur.close()

        _migrate(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    # -- artifacts -------------------------------------------------------------------
    def add_artifact(self, art: Artifact, replaces: str | None = None) -> None:
        """Record `art`; `replaces` names an artifact whose directory it overwrote (its row and evaluations go)."""
        m = art.manifest
        with self.session.begin() as s:
            if replaces and replaces != m.id:
                s.execute(delete(EvaluationRow).where(EvaluationRow.artifact_id == replaces))
                s.execute(delete(ArtifactRow).where(ArtifactRow.id == replaces))
            row = s.get(ArtifactRow, m.id) or ArtifactRow(id=m.id)
            row.name, row.format, row.parent_id = m.name, m.format, m.parent
            row.step_name, row.step_params = m.step.name, m.step.params
            row.path, row.metrics = str(art.path), m.metrics
            row.manifest = _manifest_dict(m)
            s.add(row)

    def update_metrics(self, art: Artifact) -> None:
        with self.session.begin() as s:
            row = s.get(ArtifactRow, art.id)
            if row is None:
                self._insert(s, art)
                return
            row.metrics = dict(art.manifest.metrics)
            row.manifest = _manifest_dict(art.manifest)

    def _insert(self, s: Session, art: Artifact) -> None:
        m = art.manifest
        s.add(ArtifactRow(id=m.id, name=m.name, format=m.format, parent_id=m.parent, step_name=m.step.name,
                          step_params=m.step.params, path=str(art.path), metrics=m.metrics,
                          manifest=_manifest_dict(m)))

    def add_evaluation(self, art: Artifact, dataset: str, kind: str, metrics: dict[str, Any]) -> None:
        with self.session.begin() as s:
            if s.get(ArtifactRow, art.id) is None:
                self._insert(s, art)
            s.add(EvaluationRow(artifact_id=art.id, dataset=dataset, kind=kind, metrics=metrics))

    def evaluations(self, artifact_id: str) -> list[EvaluationRow]:
        with self.session() as s:
            q = select(EvaluationRow).where(EvaluationRow.artifact_id == artifact_id).order_by(EvaluationRow.id)
            return list(s.scalars(q))

    def list(self) -> list[ArtifactRow]:
        with self.session() as s:
            return list(s.scalars(select(ArtifactRow).order_by(ArtifactRow.created_at, ArtifactRow.id)))

    def get(self, ref: str) -> ArtifactRow:
        """An artifact by full id, unique id prefix (>= 4 chars) or unique name."""
        with self.session() as s:
            row = s.get(ArtifactRow, ref)
            if row is not None:
                return row
            rows: list[ArtifactRow] = []
            if len(ref) >= 4:
                rows = list(s.scalars(select(ArtifactRow).where(ArtifactRow.id.startswith(ref))))
            if not rows:
                rows = list(s.scalars(select(ArtifactRow).where(ArtifactRow.name == ref)))
            if len(rows) == 1:
                return rows[0]
            if len(rows) > 1:
                ids = ", ".join(r.id for r in rows[:5])
                raise NotFoundError(f"{ref!r} matches {len(rows)} artifacts ({ids})", "pass a longer id")
            raise NotFoundError(f"no artifact {ref!r} in the registry ({self.url})",
                                "run `llmpress artifacts list` to see what is there")

    def children(self, artifact_id: str) -> list[ArtifactRow]:
        with self.session() as s:
            return list(s.scalars(select(ArtifactRow).where(ArtifactRow.parent_id == artifact_id)))

    def lineage(self, artifact_id: str) -> list[Manifest]:
        out: list[Manifest] = []
        seen: set[str] = set()
        ref: str | None = artifact_id
        while ref and ref not in seen:
            seen.add(ref)
            try:
                row = self.get(ref)
            except NotFoundError:
                break
            out.append(Manifest.from_dict(row.manifest, Path(row.path)))
            ref = row.parent_id
        return out

    def remove(self, ref: str, recursive: bool = False, delete_files: bool = True) -> list[str]:
        """Remove an artifact (and with `recursive` its descendants). Returns the removed ids."""
        row = self.get(ref)
        kids = self.children(row.id)
        if kids and not recursive:
            names = ", ".join(f"{k.id} ({k.name})" for k in kids[:5])
            raise RegistryError(f"artifact {row.id} has {len(kids)} child artifact(s): {names}",
                                "remove them first or pass --recursive")
        removed: list[str] = []
        for k in kids:
            removed += self.remove(k.id, recursive=True, delete_files=delete_files)
        with self.session.begin() as s:
            r = s.get(ArtifactRow, row.id)
            if r is not None:
                for ev in s.scalars(select(EvaluationRow).where(EvaluationRow.artifact_id == row.id)):
                    s.delete(ev)
                s.delete(r)
        path = Path(row.path)
        manifest_path = path / "llmpress.json"
        # Only delete directories llmpress owns (they carry a manifest); never a user's model dir.
        if delete_files and manifest_path.is_file() and path.is_relative_to(home()):
            shutil.rmtree(path, ignore_errors=True)
        removed.append(row.id)
        return removed


def _manifest_dict(m: Manifest) -> dict[str, Any]:
    import json

    return json.loads(m.to_json())


_registries: dict[str, Registry] = {}
_lock = threading.Lock()


def get_registry() -> Registry:
    """The registry for the current `LLMPRESS_DATABASE_URL` / `LLMPRESS_HOME` (cached per URL)."""
    url = database_url()
    with _lock:
        reg = _registries.get(url)
        if reg is None:
            reg = _registries[url] = Registry(url)
        return reg
