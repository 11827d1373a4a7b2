"""Versions and aliases: `deploy ARTIFACT --alias prod` points a name at an artifact; every change is
a history event, so `rollback` returns the alias to the artifact it served before the current deploy.

An alias resolves wherever a model is accepted (`llmpress.sources.resolve`), so `serve prod` and
`eval canary` work; a server that follows an alias re-reads it (`alias_target`) to hot-swap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from llmpress.errors import ConfigError, NotFoundError, RegistryError
from llmpress.registry import Registry, get_registry
from llmpress.registry.ops import AliasEventRow, AliasRow
from llmpress.registry.tables import ArtifactRow

ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


@dataclass
class AliasEvent:
    """One change of an alias, as shown by `deployments history`."""

    alias: str
    version: int
    action: str
    artifact_id: str
    artifact_name: str
    created_at: datetime
    note: str
    current: bool

    def to_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "version": self.version, "action": self.action, "artifact_id": self.artifact_id,
                "artifact_name": self.artifact_name, "created_at": self.created_at.isoformat(),
                "note": self.note, "current": self.current}


def check_alias_name(name: str) -> str:
    """An alias must look like a name, not a path, hub id or built-in, so `resolve` can never confuse them."""
    if not ALIAS_NAME.match(name or ""):
        raise ConfigError(f"alias {name!r} is not a valid name",
                          "use a letter then letters, digits, '.', '_' or '-' (at most 64), e.g. prod or canary",
                          param="alias")
    return name


def _artifact_names(s: Any, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(s.execute(select(ArtifactRow.id, ArtifactRow.name).where(ArtifactRow.id.in_(ids))).all())


def deploy(artifact: str, alias: str, note: str = "", action: str = "deploy",
           registry: Registry | None = None) -> AliasEvent:
    """Point `alias` at `artifact` (id, id prefix, name or another alias); returns the new event."""
    reg = registry or get_registry()
    check_alias_name(alias)
    target = alias_target(artifact, reg) or _artifact_id(artifact, reg)
    with reg.session.begin() as s:
        row = s.get(AliasRow, alias, with_for_update=True)
        version = (s.scalar(select(func.max(AliasEventRow.version)).where(AliasEventRow.alias == alias)) or 0) + 1
        ev = AliasEventRow(alias=alias, version=version, action=action, artifact_id=target,
                           prev_event_id=row.event_id if row else None, note=note, created_at=datetime.now(UTC))
        s.add(ev)
        s.flush()
        if row is None:
            s.add(AliasRow(name=alias, artifact_id=target, event_id=ev.id, updated_at=datetime.now(UTC)))
        else:
            row.artifact_id, row.event_id, row.updated_at = target, ev.id, datetime.now(UTC)
        name = _artifact_names(s, {target}).get(target, "")
    return AliasEvent(alias, version, action, target, name, ev.created_at, note, True)


def _artifact_id(spec: str, reg: Registry) -> str:
    """A registered artifact's id; a built-in or a local directory is registered first."""
    from pathlib import Path

    try:
        return reg.get(spec).id
    except NotFoundError:
        if not (spec.startswith("builtin:") or Path(spec).expanduser().exists()):
            raise
    from llmpress.sources import resolve

    art = resolve(spec)
    reg.add_artifact(art)
    return art.id


def rollback(alias: str, registry: Registry | None = None) -> AliasEvent:
    """Return `alias` to the artifact it pointed at before its current deploy (repeatable: walks back)."""
    reg = registry or get_registry()
    with reg.session.begin() as s:
        row = s.get(AliasRow, alias, with_for_update=True)
        if row is None:
            raise NotFoundError(f"no alias {alias!r}", "run `llmpress deployments list` to see aliases")
        cur = s.get(AliasEventRow, row.event_id)
        prev = s.get(AliasEventRow, cur.prev_event_id) if cur and cur.prev_event_id else None
        if prev is None:
            raise RegistryError(f"alias {alias!r} has no earlier artifact to roll back to",
                                "deploy another artifact to it, or see `llmpress deployments history " + alias + "`")
        if s.get(ArtifactRow, prev.artifact_id) is None:
            raise RegistryError(f"alias {alias!r} would roll back to artifact {prev.artifact_id}, which was removed",
                                f"deploy an existing artifact with `llmpress deploy ARTIFACT --alias {alias}`")
        version = (s.scalar(select(func.max(AliasEventRow.version)).where(AliasEventRow.alias == alias)) or 0) + 1
        ev = AliasEventRow(alias=alias, version=version, action="rollback", artifact_id=prev.artifact_id,
                           prev_event_id=prev.prev_event_id, note=f"from {cur.artifact_id}",
                           created_at=datetime.now(UTC))
        s.add(ev)
        s.flush()
        row.artifact_id, row.event_id, row.updated_at = prev.artifact_id, ev.id, datetime.now(UTC)
        name = _artifact_names(s, {prev.artifact_id}).get(prev.artifact_id, "")
    return AliasEvent(alias, version, "rollback", prev.artifact_id, name, ev.created_at, ev.note, True)


def alias_target(name: str, registry: Registry | None = None) -> str | None:
    """The artifact id `name` points at, or None when it is no alias."""
    from llmpress.registry.ops import alias_target as _target

    if not ALIAS_NAME.match(name or ""):
        return None
    return _target(registry or get_registry(), name)


def list_aliases(registry: Registry | None = None) -> list[dict[str, Any]]:
    """Every alias with its artifact, version and last change."""
    reg = registry or get_registry()
    with reg.session() as s:
        rows = list(s.scalars(select(AliasRow).order_by(AliasRow.name)))
        names = _artifact_names(s, {r.artifact_id for r in rows})
        events = {e.id: e for e in s.scalars(select(AliasEventRow).where(
            AliasEventRow.id.in_([r.event_id for r in rows])))} if rows else {}
    return [{"alias": r.name, "artifact_id": r.artifact_id, "artifact_name": names.get(r.artifact_id, "(removed)"),
             "version": events[r.event_id].version if r.event_id in events else None,
             "action": events[r.event_id].action if r.event_id in events else None,
             "updated_at": r.updated_at.isoformat() if r.updated_at else None} for r in rows]


def history(alias: str, registry: Registry | None = None) -> list[AliasEvent]:
    """Every change of `alias`, newest first."""
    reg = registry or get_registry()
    with reg.session() as s:
        cur = s.get(AliasRow, alias)
        if cur is None:
            raise NotFoundError(f"no alias {alias!r}", "run `llmpress deployments list` to see aliases")
        evs = list(s.scalars(select(AliasEventRow).where(AliasEventRow.alias == alias)
                             .order_by(AliasEventRow.version.desc())))
        names = _artifact_names(s, {e.artifact_id for e in evs})
    return [AliasEvent(e.alias, e.version, e.action, e.artifact_id, names.get(e.artifact_id, "(removed)"),
                       e.created_at, e.note or "", e.id == cur.event_id) for e in evs]


def servers(registry: Registry | None = None, running_only: bool = True) -> list[dict[str, Any]]:
    """Server processes recorded by `llmpress serve` (the 0002 deployments table): what runs where."""
    from llmpress.registry.tables import DeploymentRow

    reg = registry or get_registry()
    with reg.session() as s:
        q = select(DeploymentRow).order_by(DeploymentRow.started_at)
        if running_only:
            q = q.where(DeploymentRow.stopped_at.is_(None))
        rows = list(s.scalars(q))
    return [{"id": r.id, "alias": r.alias, "artifact_id": r.artifact_id, "host": r.host, "port": r.port,
             "started_at": r.started_at, "stopped_at": r.stopped_at, "config": r.config} for r in rows]


def aliases_of(artifact_id: str, registry: Registry | None = None) -> list[str]:
    """The aliases that currently point at an artifact (e.g. to refuse removing a served model)."""
    reg = registry or get_registry()
    with reg.session() as s:
        return list(s.scalars(select(AliasRow.name).where(AliasRow.artifact_id == artifact_id)))
