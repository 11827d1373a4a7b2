"""Aliases: deploy / rollback / history, resolution wherever a model is accepted, bad input (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from pg import make_artifact
from typer.testing import CliRunner

from llmpress.errors import ConfigError, NotFoundError, RegistryError


@pytest.fixture
def cli():
    from llmpress.cli.main import _register_all, app

    _register_all()
    return app


def test_deploy_rollback_history(backend_registry) -> None:
    from llmpress.ops import deployments as d

    reg = backend_registry
    a, b, c = (make_artifact(reg, f"model-{x}") for x in "abc")
    assert d.deploy(a.id, "prod", registry=reg).version == 1
    d.deploy(b.id, "prod", note="better", registry=reg)
    d.deploy("model-c", "prod", registry=reg)  # by name
    d.deploy("prod", "canary", registry=reg)  # an alias names its artifact
    assert d.alias_target("prod", reg) == c.id and d.alias_target("canary", reg) == c.id
    # rollback walks back the chain of deploys: c -> b -> a, then nothing earlier
    assert d.rollback("prod", registry=reg).artifact_id == b.id
    assert d.rollback("prod", registry=reg).artifact_id == a.id
    with pytest.raises(RegistryError, match="no earlier artifact"):
        d.rollback("prod", registry=reg)
    assert d.alias_target("prod", reg) == a.id
    hist = d.history("prod", registry=reg)
    assert [(e.version, e.action, e.artifact_id) for e in hist] == [
        (5, "rollback", a.id), (4, "rollback", b.id), (3, "deploy", c.id), (2, "deploy", b.id), (1, "deploy", a.id)]
    assert [e.current for e in hist] == [True, False, False, False, False]
    rows = {r["alias"]: r for r in d.list_aliases(reg)}
    assert rows["prod"]["artifact_id"] == a.id and rows["prod"]["version"] == 5
    assert rows["canary"]["artifact_name"] == "model-c"
    assert sorted(d.aliases_of(c.id, reg)) == ["canary"]


def test_bad_input_leaves_nothing(backend_registry) -> None:
    from llmpress.ops import deployments as d

    reg = backend_registry
    a = make_artifact(reg, "model-x")
    with pytest.raises(NotFoundError):
        d.deploy("no-such-artifact", "prod", registry=reg)
    for bad in ("", "a/b", "builtin:x", "1abc", "x" * 65):
        with pytest.raises(ConfigError):
            d.deploy(a.id, bad, registry=reg)
    with pytest.raises(NotFoundError):
        d.rollback("ghost", registry=reg)
    with pytest.raises(NotFoundError):
        d.history("ghost", registry=reg)
    assert d.list_aliases(reg) == []


def test_alias_resolves_as_a_model(fresh_registry, tiny) -> None:
    from llmpress.ops.deployments import deploy
    from llmpress.sources import resolve

    deploy("builtin:tiny-llama", "prod", registry=fresh_registry)
    art = resolve("prod")
    assert art.id == tiny.id and art.path == tiny.path
    with pytest.raises(NotFoundError, match="alias"):
        resolve("not-an-alias")
    gone = make_artifact(fresh_registry, "short-lived")
    deploy(gone.id, "dangling", registry=fresh_registry)
    with pytest.raises(RegistryError, match="alias"):  # `artifacts rm` refuses a served artifact
        fresh_registry.remove(gone.id)
    from llmpress.registry.tables import ArtifactRow

    with fresh_registry.session.begin() as s:  # removed behind the registry's back: the alias says so
        s.delete(s.get(ArtifactRow, gone.id))
    with pytest.raises(NotFoundError, match="no longer in the registry"):
        resolve("dangling")


def test_cli(cli, fresh_registry) -> None:
    a, b = make_artifact(fresh_registry, "m-a"), make_artifact(fresh_registry, "m-b")
    run = CliRunner().invoke
    assert run(cli, ["deploy", a.id, "--alias", "prod"]).exit_code == 0
    r = run(cli, ["deploy", b.id, "--alias", "prod", "--note", "v2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["version"] == 2
    listed = json.loads(run(cli, ["deployments", "list", "--json"]).stdout)
    assert [(x["alias"], x["artifact_id"]) for x in listed] == [("prod", b.id)]
    r = run(cli, ["rollback", "prod", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["artifact_id"] == a.id
    hist = json.loads(run(cli, ["deployments", "history", "prod", "--json"]).stdout)
    assert [h["action"] for h in hist] == ["rollback", "deploy", "deploy"] and hist[1]["note"] == "v2"
    r = run(cli, ["deployments", "history", "ghost"])
    assert r.exit_code == NotFoundError.exit_code and "no alias 'ghost'" in r.output
    r = run(cli, ["rollback", "prod"])
    assert r.exit_code == RegistryError.exit_code and "no earlier artifact" in r.output
    from llmpress.registry.keys import KeyStore

    dep = KeyStore(fresh_registry).start_deployment(b.id, "127.0.0.1", 8123, {}, alias="prod")
    running = json.loads(run(cli, ["deployments", "servers", "--json"]).stdout)
    assert [(x["id"], x["alias"], x["port"]) for x in running] == [(dep, "prod", 8123)]
    KeyStore(fresh_registry).stop_deployment(dep)
    assert json.loads(run(cli, ["deployments", "servers", "--json"]).stdout) == []
    assert len(json.loads(run(cli, ["deployments", "servers", "--all", "--json"]).stdout)) == 1
    r = run(cli, ["deploy", "zzzz-missing", "--alias", "prod"])
    assert r.exit_code == NotFoundError.exit_code and len(r.output.strip().splitlines()) == 1
