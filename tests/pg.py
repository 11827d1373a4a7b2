"""A real PostgreSQL server for the tests (one per session) and a registry fixture over both backends.

The server comes from the Debian `postgresql` package (`make` installs it): `initdb` into a temporary
directory, `pg_ctl start` on a free 127.0.0.1 port with Unix sockets off. PostgreSQL refuses to run as
root, so under root the data directory is handed to the `postgres` system user and the server runs as
that user. Each test gets its own database (CREATE DATABASE is cheap); the server stops at session end.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin that has initdb, or None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(dirs[-1]).parent if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """initdb + pg_ctl on a temp dir; `url(db)` gives a SQLAlchemy URL for database `db`."""

    def __init__(self) -> None:
        b = pg_bin()
        if b is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package `postgresql`; `make install` adds it)")
        self.bin = b
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="llmpress-pg-"))
        self.data = self.root / "data"
        self.user = "llmpress"
        self._as: list[str] = []
        if os.geteuid() == 0:  # postgres will not run as root: run it as the `postgres` system user
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120, cwd=self.root)

    def start(self) -> PgServer:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        opts = f"-p {self.port} -h 127.0.0.1 -k '' -F -c max_connections=60"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


_server: PgServer | None = None


def shared_server() -> PgServer:
    """One server per test process, whichever test module asks first; stopped when the process exits."""
    global _server
    if _server is None:
        import atexit

        _server = PgServer().start()
        atexit.register(_server.stop)
    return _server


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    if pg_bin() is None:
        pytest.skip("PostgreSQL binaries not installed (apt-get install postgresql; `make install` does it)")
    pytest.importorskip("psycopg")
    return shared_server()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database on the session's PostgreSQL server."""
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_registry(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The registry on a fresh SQLite file, then on a fresh PostgreSQL database (set as LLMPRESS_DATABASE_URL)."""
    from llmpress.registry import get_registry

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    monkeypatch.setenv("LLMPRESS_DATABASE_URL", url)
    return get_registry()


def make_artifact(reg, name: str, size: int = 4096):  # type: ignore[no-untyped-def]
    """A small registered artifact with random bytes (fast stand-in where no model has to run)."""
    from llmpress.artifact import Step, create_artifact

    with create_artifact(name, Step("test", {"size": size}), register=False) as w:
        (w.path / "weights.bin").write_bytes(os.urandom(size))
        (w.path / "config.json").write_text(json.dumps({"name": name}))
    reg.add_artifact(w.artifact)
    return w.artifact
