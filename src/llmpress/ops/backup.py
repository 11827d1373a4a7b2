"""Backup and restore of a whole llmpress home: the registry and the artifacts, in one tar archive.

The registry is snapshotted consistently while servers may be writing to it: SQLite through its
online backup API, PostgreSQL through `pg_dump` (one transaction). Artifact files are hashed as
they are streamed into the archive and must match the sha256 their manifest recorded. The archive
is written to a temporary file that is renamed into place only when complete, so an interrupted
backup leaves nothing. `restore` verifies every file against the archive's own checksums before it
writes anything, refuses a home that already holds artifacts, keys or aliases unless forced, and
rewrites artifact paths from the old home to the new one.

Layout: `llmpress-backup/registry.sqlite|registry.sql`, `llmpress-backup/artifacts/<path under home>/...`
and, last, `llmpress-backup/backup.json` (format, source home, database kind, sha256 of every member).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from llmpress.artifact import MANIFEST, home
from llmpress.errors import ConfigError, IntegrityError, NotFoundError, RegistryError
from llmpress.registry import Registry, database_url, get_registry
from llmpress.registry.tables import ApiKeyRow, ArtifactRow

FORMAT = 1
ROOT = "llmpress-backup"
INDEX = f"{ROOT}/backup.json"
Progress = Callable[[str, int], None]  # (what, bytes) after each file


@dataclass
class BackupConfig:
    """What `llmpress backup` writes: OUT (a .tar, or .tar.gz / .tgz to compress) and which artifacts."""

    out: Path
    aliased_only: bool = False  # only artifacts an alias points at (plus the bases adapters need)


@dataclass
class BackupReport:
    path: Path
    database: str
    artifacts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # id: reason (external dirs, missing files)
    files: int = 0
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "database": self.database, "artifacts": self.artifacts,
                "skipped": self.skipped, "files": self.files, "bytes": self.bytes}


@dataclass
class RestoreReport:
    home: Path
    database: str
    artifacts: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"home": str(self.home), "database": self.database, "artifacts": self.artifacts,
                "files": self.files, "bytes": self.bytes}


# -- helpers ------------------------------------------------------------------------------------
class _HashingReader(io.RawIOBase):
    """Reads a file while hashing it, so the bytes that go into the archive are the bytes verified."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.h.update(b)
        return b


def _kind(url: str) -> str:
    name = make_url(url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise ConfigError(f"backup supports SQLite and PostgreSQL registries, not {name}",
                          "point LLMPRESS_DATABASE_URL at SQLite or PostgreSQL")
    return name


def _pg_tool(name: str) -> str:
    """pg_dump / psql: the newest /usr/lib/postgresql/*/bin one (a dump needs a pg_dump >= the server), else PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    exe = found[-1] if found else shutil.which(name)
    if exe is None:
        raise ConfigError(f"{name} is not installed, and a PostgreSQL registry is backed up and restored with it",
                          "install the Debian package postgresql-client (or postgresql)")
    return exe


def _libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run_pg(args: list[str], what: str) -> None:
    try:
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=3600)
    except subprocess.CalledProcessError as e:
        msg = (e.stderr or e.stdout or "").strip().splitlines()
        raise RegistryError(f"{what} failed: {msg[-1] if msg else e}", "check LLMPRESS_DATABASE_URL and the server") from e


def _snapshot_registry(reg: Registry, kind: str, dest: Path) -> None:
    """A consistent copy of the registry at one moment, while others may keep writing."""
    if kind == "sqlite":
        src_path = make_url(reg.url).database
        from urllib.parse import quote

        src = sqlite3.connect(f"file:{quote(str(src_path))}?mode=ro", uri=True)
        dst = sqlite3.connect(dest)
        try:
            with dst:
                src.backup(dst)
        finally:
            dst.close()
            src.close()
    else:
        _run_pg([_pg_tool("pg_dump"), "--format=plain", "--no-owner", "--no-privileges", "--file", str(dest),
                 "--dbname", _libpq_url(reg.url)], "pg_dump")


def _owned_rel(path: Path, root: Path) -> str | None:
    """Where an artifact directory sits under the home (posix), or None for a directory outside it."""
    try:
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else None
    except ValueError:
        return None


def _select_artifacts(reg: Registry, aliased_only: bool) -> list[ArtifactRow]:
    rows = reg.list()
    if not aliased_only:
        return rows
    from llmpress.registry.ops import AbTestRow, AliasRow

    with reg.session() as s:
        keep = set(s.scalars(select(AliasRow.artifact_id)))
        for t in s.scalars(select(AbTestRow).where(AbTestRow.status == "running")):
            keep |= {a.get("artifact_id") for a in t.arms if a.get("artifact_id")}
    by_id = {r.id: r for r in rows}
    # an adapter is useless without its base: keep the parents of every kept adapter
    for aid in list(keep):
        row = by_id.get(aid)
        while row is not None and row.format == "adapter" and row.parent_id:
            keep.add(row.parent_id)
            row = by_id.get(row.parent_id)
    return [r for r in rows if r.id in keep]


@contextlib.contextmanager
def _atomic_file(final: Path) -> Iterator[Path]:
    """A temporary sibling of `final`, renamed onto it on success and deleted on any failure or interrupt."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tar_mode(path: Path, write: bool) -> str:
    gz = path.name.endswith((".tar.gz", ".tgz"))
    return ("w:gz" if gz else "w") if write else "r:*"


# -- backup -------------------------------------------------------------------------------------
def backup(config: BackupConfig, registry: Registry | None = None, progress: Progress | None = None) -> BackupReport:
    """Write one archive of the registry and the artifacts (each file checked against its manifest sha256)."""
    reg = registry or get_registry()
    kind = _kind(reg.url)
    root = home()
    out = Path(config.out).expanduser()
    if out.is_dir():
        raise ConfigError(f"{out} is a directory", "pass a file name, e.g. backup.tar or backup.tar.gz")
    report = BackupReport(out, kind)
    index: dict[str, Any] = {"format": FORMAT, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                             "home": str(root), "database": kind, "aliased_only": config.aliased_only,
                             "artifacts": [], "files": {}}
    with _atomic_file(out) as tmp, tarfile.open(tmp, _tar_mode(out, write=True)) as tar, \
            tempfile.TemporaryDirectory(prefix="llmpress-backup-") as scratch:
        # 1. the registry, consistent at one moment
        snap = Path(scratch) / ("registry.sqlite" if kind == "sqlite" else "registry.sql")
        _snapshot_registry(reg, kind, snap)
        name = f"{ROOT}/{snap.name}"
        index["registry"] = name
        index["files"][name] = _add_file(tar, snap, name, None)
        # 2. the artifacts the registry knows, each file verified as it is streamed
        for row in _select_artifacts(reg, config.aliased_only):
            path = Path(row.path)
            rel = _owned_rel(path, root)
            if not (path / MANIFEST).is_file():
                report.skipped.append(f"{row.id}: {path} has no manifest (missing or not an llmpress artifact)")
                continue
            if rel is None:
                rel = f"artifacts/{row.id}"  # an llmpress artifact written outside the home comes back inside it
            manifest = json.loads((path / MANIFEST).read_text())
            expected: dict[str, str] = manifest.get("files_sha256") or {}
            files = sorted(p for p in path.rglob("*") if p.is_file())
            listed = {p.relative_to(path).as_posix() for p in files} - {MANIFEST}
            missing = sorted(set(expected) - listed)
            if missing:
                raise IntegrityError(f"artifact {row.id} ({row.name}): {missing[0]} listed in its manifest is missing",
                                     "restore the file or remove the artifact, then back up again")
            for p in files:
                frel = p.relative_to(path).as_posix()
                member = f"{ROOT}/artifacts/{rel}/{frel}"
                digest = _add_file(tar, p, member, expected.get(frel) if frel != MANIFEST else None)
                index["files"][member] = digest
                report.files += 1
                report.bytes += p.stat().st_size
                if progress:
                    progress(member, p.stat().st_size)
            index["artifacts"].append({"id": row.id, "name": row.name, "path": str(path), "rel": rel})
            report.artifacts.append(row.id)
        # 3. the index, last: a truncated archive has none and is refused as a whole
        data = json.dumps(index, indent=1).encode()
        info = tarfile.TarInfo(INDEX)
        info.size, info.mtime, info.mode = len(data), int(datetime.now(UTC).timestamp()), 0o644
        tar.addfile(info, io.BytesIO(data))
    return report


def _add_file(tar: tarfile.TarFile, path: Path, member: str, expected: str | None) -> str:
    st = path.stat()
    info = tarfile.TarInfo(member)
    info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
    with open(path, "rb") as f:
        reader = _HashingReader(f)
        tar.addfile(info, reader)  # type: ignore[arg-type]
    digest = reader.h.hexdigest()
    if expected is not None and digest != expected:
        raise IntegrityError(f"{path} does not match its sha256 in {MANIFEST}; the backup was not written",
                             "the file was changed or truncated: restore it or re-create the artifact")
    return digest


# -- restore ------------------------------------------------------------------------------------
def _corrupt(archive: Path, why: str) -> IntegrityError:
    why = why.splitlines()[0].rstrip(":") if why.strip() else "unreadable"
    return IntegrityError(f"archive {archive} is corrupted or not an llmpress backup ({why}); nothing was restored",
                          "use another copy of the backup")


def read_index(archive: Path) -> dict[str, Any]:
    """The archive's backup.json, or an IntegrityError when the archive is unreadable or incomplete."""
    if not archive.is_file():
        raise NotFoundError(f"backup archive {archive} does not exist", "pass the file `llmpress backup` wrote")
    try:
        with tarfile.open(archive, "r:*") as tar:
            f = tar.extractfile(tar.getmember(INDEX))
            index = json.loads(f.read()) if f else None
    except KeyError:
        raise _corrupt(archive, "no backup.json: truncated or not a backup") from None
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _corrupt(archive, f"{e.__class__.__name__}: {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("files"), dict):
        raise _corrupt(archive, "backup.json has an unknown format")
    return index


def verify_archive(archive: Path) -> dict[str, Any]:
    """Check every member against the sha256 the index recorded (reads the archive, writes nothing)."""
    index = read_index(archive)
    expected: dict[str, str] = index["files"]
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                if m.name == INDEX:
                    continue
                if m.name not in expected or not m.isfile():
                    raise _corrupt(archive, f"unexpected member {m.name}")
                f = tar.extractfile(m)
                h = hashlib.sha256()
                while f is not None and (b := f.read(1 << 20)):
                    h.update(b)
                if h.hexdigest() != expected[m.name]:
                    raise _corrupt(archive, f"{m.name} does not match its sha256")
                seen.add(m.name)
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
        raise _corrupt(archive, f"{e.__class__.__name__}: {e}") from None
    missing = sorted(set(expected) - seen)
    if missing:
        raise _corrupt(archive, f"{missing[0]} is missing")
    for name in expected:
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts or p.parts[0] != ROOT:
            raise _corrupt(archive, f"unsafe member path {name}")
    return index


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _home_contents(reg: Registry, root: Path) -> str | None:
    """What makes a home non-empty (registry rows, artifact directories), or None."""
    from llmpress.registry.ops import AliasRow

    with reg.session() as s:
        n_art = s.scalar(select(func.count()).select_from(ArtifactRow)) or 0
        n_keys = s.scalar(select(func.count()).select_from(ApiKeyRow)) or 0
        n_alias = s.scalar(select(func.count()).select_from(AliasRow)) or 0
    art_dir = root / "artifacts"
    n_dirs = len([p for p in art_dir.iterdir() if not p.name.startswith(".")]) if art_dir.is_dir() else 0
    if n_art or n_keys or n_alias or n_dirs:
        return f"{n_art} artifacts, {n_keys} keys, {n_alias} aliases in the registry, {n_dirs} artifact directories"
    return None


def _forget_registry(url: str) -> None:
    """Close and drop the cached Registry for `url` so the next get_registry() opens the restored one."""
    import llmpress.registry as registry_mod

    with registry_mod._lock:
        reg = registry_mod._registries.pop(url, None)
    if reg is not None:
        reg.engine.dispose()


def check_target(index: dict[str, Any], force: bool) -> None:
    """Refuse a registry of the other kind, and a non-empty home unless `force`."""
    kind = _kind(database_url())
    if index["database"] != kind:
        raise ConfigError(f"the archive holds a {index['database']} registry but LLMPRESS_DATABASE_URL is {kind}",
                          f"restore into a {index['database']} registry (set or unset LLMPRESS_DATABASE_URL)")
    root = home()
    contents = _home_contents(get_registry(), root)
    if contents and not force:
        raise RegistryError(f"the home {root} is not empty ({contents})",
                            "restore into an empty LLMPRESS_HOME / database, or pass --force to replace it")


def restore(archive: Path, force: bool = False, progress: Progress | None = None,
            index: dict[str, Any] | None = None) -> RestoreReport:
    """Restore a backup into the current home and registry (verified first; refused if non-empty unless forced).
    `index` is `verify_archive(archive)` when the caller already verified it."""
    archive = Path(archive).expanduser()
    index = index if index is not None else verify_archive(archive)
    check_target(index, force)
    url = database_url()
    kind = _kind(url)
    root = home()
    report = RestoreReport(root, kind)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=root))
    try:
        # 1. unpack everything into a staging directory inside the home (same filesystem: renames are atomic)
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                if m.name == INDEX:
                    continue
                dest = staging / PurePosixPath(m.name).relative_to(ROOT)
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with open(dest, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
                if m.name.startswith(f"{ROOT}/artifacts/"):
                    report.files += 1
                    report.bytes += m.size
                    if progress:
                        progress(m.name, m.size)
        # 2. the registry
        _forget_registry(url)
        reg_file = staging / PurePosixPath(index["registry"]).name
        if kind == "sqlite":
            target = Path(make_url(url).database or "")
            for suffix in ("-wal", "-shm"):
                Path(str(target) + suffix).unlink(missing_ok=True)
            os.replace(reg_file, target)
        else:
            _load_pg_dump(url, reg_file)
        # 3. the artifact directories, each renamed into place
        moved: dict[str, Path] = {}
        for a in index["artifacts"]:
            src = staging / "artifacts" / a["rel"]
            dest = root / a["rel"]
            if dest.is_symlink() or dest.exists():
                if dest.is_symlink() or dest.is_file():
                    dest.unlink()
                else:
                    shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            moved[a["id"]] = dest
            report.artifacts.append(a["id"])
        # 4. paths in the registry: from the old home to this one
        reg = get_registry()
        old_root = Path(index["home"])
        with reg.session.begin() as s:
            for row in s.scalars(select(ArtifactRow)):
                if row.id in moved:
                    row.path = str(moved[row.id])
                else:
                    rel = _owned_rel(Path(row.path), old_root)
                    if rel is not None:
                        row.path = str(root / rel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _load_pg_dump(url: str, dump: Path) -> None:
    """Replace the registry tables of a PostgreSQL database with the dump (one transaction)."""
    from sqlalchemy import create_engine

    eng = create_engine(url)
    try:
        with eng.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        eng.dispose()
    _run_pg([_pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", str(dump),
             "--dbname", _libpq_url(url)], "psql (loading the registry dump)")
