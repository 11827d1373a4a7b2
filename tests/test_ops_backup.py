"""Backup and restore: byte-identical round trip on SQLite and PostgreSQL, keys and aliases come back,
`serve prod` works from the restored home, and bad archives / non-empty homes are refused whole."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from live import wait_ready
from pg import make_artifact

from llmpress.errors import IntegrityError, NotFoundError, RegistryError


def _tree(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _populate(reg, tiny):  # type: ignore[no-untyped-def]
    from llmpress.ops.deployments import deploy
    from llmpress.registry.keys import KeyStore

    a, b = make_artifact(reg, "ops-a", 300_000), make_artifact(reg, "ops-b")
    deploy("builtin:tiny-llama", "prod", registry=reg)
    deploy(a.id, "canary", registry=reg)
    deploy(b.id, "canary", registry=reg)
    _, secret = KeyStore(reg).create("svc", token_budget=1000)
    return a, b, secret


def _switch_home(monkeypatch: pytest.MonkeyPatch, new_home: Path, url: str | None) -> None:
    monkeypatch.setenv("LLMPRESS_HOME", str(new_home))
    if url is None:
        monkeypatch.delenv("LLMPRESS_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("LLMPRESS_DATABASE_URL", url)


def test_round_trip_byte_identical(backend_registry, tiny, tmp_path, monkeypatch, request) -> None:
    from llmpress.ops.backup import BackupConfig, backup, restore
    from llmpress.ops.deployments import history, list_aliases
    from llmpress.registry import get_registry
    from llmpress.registry.keys import KeyStore
    from llmpress.sources import resolve

    reg = backend_registry
    a, b, secret = _populate(reg, tiny)
    before = {r.id: (r.name, _tree(Path(r.path))) for r in reg.list()}
    aliases_before = [(x["alias"], x["artifact_id"], x["version"]) for x in list_aliases(reg)]
    archive = tmp_path / "b.tar.gz"
    rep = backup(BackupConfig(archive), registry=reg)
    assert archive.is_file() and set(rep.artifacts) == set(before)
    assert not list(tmp_path.glob(".b.tar.gz.tmp-*"))

    pg = "postgresql" in reg.url
    _switch_home(monkeypatch, tmp_path / "home2", request.getfixturevalue("pg_server").create_database() if pg else None)
    restored = restore(archive)
    assert set(restored.artifacts) == set(before)
    reg2 = get_registry()
    assert reg2 is not reg
    after = {r.id: (r.name, _tree(Path(r.path))) for r in reg2.list()}
    assert after == before  # same ids, names and every file byte-identical
    assert all(Path(r.path).is_relative_to(tmp_path / "home2") for r in reg2.list())
    assert [(x["alias"], x["artifact_id"], x["version"]) for x in list_aliases(reg2)] == aliases_before
    assert [e.action for e in history("canary", reg2)] == ["deploy", "deploy"]
    assert KeyStore(reg2).verify(secret).name == "svc"  # keys come back, still hashed
    art = resolve("prod")
    assert art.id == tiny.id and art.path.is_relative_to(tmp_path / "home2")
    art.verify()
    # a second restore into the now non-empty home is refused, and --force replaces it
    with pytest.raises(RegistryError, match="not empty"):
        restore(archive)
    assert set(restore(archive, force=True).artifacts) == set(before)


def test_aliased_only(fresh_registry, tiny, tmp_path) -> None:
    from llmpress.ops.backup import BackupConfig, backup

    a, b, _ = _populate(fresh_registry, tiny)
    make_artifact(fresh_registry, "not-aliased")
    rep = backup(BackupConfig(tmp_path / "x.tar", aliased_only=True), registry=fresh_registry)
    assert sorted(rep.artifacts) == sorted([tiny.id, b.id])


def test_tampered_artifact_aborts_backup_leaving_nothing(fresh_registry, tmp_path) -> None:
    from llmpress.ops.backup import BackupConfig, backup

    art = make_artifact(fresh_registry, "tampered")
    w = art.path / "weights.bin"
    data = w.read_bytes()
    w.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    (tmp_path / "out").mkdir()
    with pytest.raises(IntegrityError, match="weights.bin"):
        backup(BackupConfig(tmp_path / "out" / "t.tar"), registry=fresh_registry)
    assert list((tmp_path / "out").iterdir()) == []  # no archive, no temporary file


def _corrupt_copies(good: Path, tmp: Path) -> dict[str, Path]:
    data = good.read_bytes()
    truncated = tmp / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp / "flipped.tar"
    with tarfile.open(good) as t:
        m = next(x for x in t.getmembers() if x.name.endswith("weights.bin"))
        off = m.offset_data + 100
    flipped.write_bytes(data[:off] + bytes([data[off] ^ 0xFF]) + data[off + 1:])
    garbage = tmp / "garbage.tar"
    garbage.write_bytes(os.urandom(5000))
    return {"truncated": truncated, "flipped": flipped, "garbage": garbage}


def test_corrupted_archives_refused_before_anything_is_written(fresh_registry, tmp_path, monkeypatch) -> None:
    from llmpress.ops.backup import BackupConfig, backup, restore

    make_artifact(fresh_registry, "payload", 200_000)
    good = tmp_path / "good.tar"
    backup(BackupConfig(good), registry=fresh_registry)
    bad = _corrupt_copies(good, tmp_path)
    new_home = tmp_path / "empty-home"
    _switch_home(monkeypatch, new_home, None)
    for name, path in bad.items():
        with pytest.raises(IntegrityError, match="corrupted") as e:
            restore(path)
        assert "\n" not in e.value.one_line(), name
        assert not (new_home / "artifacts").exists() and not list(new_home.glob(".restore-*")), name
    with pytest.raises(NotFoundError):
        restore(tmp_path / "missing.tar")


def _llmpress(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmpress.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_one_line_errors(fresh_registry, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from llmpress.cli.main import _register_all, app

    _register_all()
    make_artifact(fresh_registry, "cli-a")
    r = CliRunner().invoke(app, ["backup", str(tmp_path / "c.tar"), "--json"])
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad.tar"
    bad.write_bytes((tmp_path / "c.tar").read_bytes()[:3000])
    _switch_home(monkeypatch, tmp_path / "h", None)
    r = CliRunner().invoke(app, ["restore", str(bad)])
    assert r.exit_code == IntegrityError.exit_code and "corrupted" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert CliRunner().invoke(app, ["restore", str(tmp_path / "c.tar")]).exit_code == 0
    r = CliRunner().invoke(app, ["restore", str(tmp_path / "c.tar")])
    assert r.exit_code == RegistryError.exit_code and "--force" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert CliRunner().invoke(app, ["restore", str(tmp_path / "c.tar"), "--force"]).exit_code == 0


@pytest.mark.slow
def test_cli_backup_restore_then_serve_prod(fresh_registry, tiny, tmp_path) -> None:
    import httpx

    env = dict(os.environ, COLUMNS="200")
    assert _llmpress("deploy", "builtin:tiny-llama", "--alias", "prod", env=env).returncode == 0
    r = _llmpress("backup", str(tmp_path / "home.tar"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    env2 = dict(env, LLMPRESS_HOME=str(tmp_path / "new-home"))
    env2.pop("LLMPRESS_DATABASE_URL", None)
    bad = tmp_path / "bad.tar"
    bad.write_bytes((tmp_path / "home.tar").read_bytes()[:4096])
    r = _llmpress("restore", str(bad), env=env2)
    assert r.returncode == IntegrityError.exit_code and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "corrupted" in r.stderr and "Traceback" not in r.stderr
    r = _llmpress("restore", str(tmp_path / "home.tar"), env=env2)
    assert r.returncode == 0, r.stderr
    r = _llmpress("restore", str(tmp_path / "home.tar"), env=env2)
    assert r.returncode == RegistryError.exit_code and "--force" in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llmpress.cli.main", "serve", "prod", "--port", str(port),
                             "--no-auth", "--kv-cache-mb", "16", "--log-level", "warning"], env=env2,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, 120)
        r = httpx.post(url + "/v1/completions", json={"model": "prod", "prompt": "Hello", "max_tokens": 4,
                                                      "temperature": 0, "ignore_eos": True}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
