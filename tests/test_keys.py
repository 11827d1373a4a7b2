"""`llmpress keys ...` and the key store: hashed secrets, scopes, expiry, revoke, rotate, usage rows."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from llmpress.errors import ConfigError, NotFoundError


@pytest.fixture
def cli():
    from llmpress.cli.main import _register_all, app

    _register_all()
    return app


def test_keys_cli_lifecycle(cli, fresh_registry):
    r = CliRunner().invoke(cli, ["keys", "create", "ci", "--rpm", "10", "--budget", "1000", "--json"])
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    secret = made["secret"]
    assert secret.startswith(f"lp_{made['id']}_") and len(secret) > 40
    listed = json.loads(CliRunner().invoke(cli, ["keys", "list", "--json"]).stdout)
    assert [k["name"] for k in listed] == ["ci"] and listed[0]["status"] == "active"
    assert secret not in json.dumps(listed)  # never shown again
    from llmpress.registry.tables import ApiKeyRow

    with fresh_registry.session() as s:
        row = s.get(ApiKeyRow, made["id"])
    assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    r = CliRunner().invoke(cli, ["keys", "rotate", "ci", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["secret"] != secret
    r = CliRunner().invoke(cli, ["keys", "revoke", made["id"]])
    assert r.exit_code == 0
    listed = json.loads(CliRunner().invoke(cli, ["keys", "list", "--json"]).stdout)
    assert listed[0]["status"] == "revoked"
    r = CliRunner().invoke(cli, ["keys", "revoke", "nope"])
    assert r.exit_code == NotFoundError.exit_code and "no API key" in r.output
    r = CliRunner().invoke(cli, ["keys", "create", "x", "--scopes", "root"])
    assert r.exit_code == ConfigError.exit_code and "unknown scope" in r.output


def test_verify_and_usage(fresh_registry):
    from llmpress.errors import AuthError
    from llmpress.registry.keys import KeyStore

    ks = KeyStore(fresh_registry)
    info, secret = ks.create("svc", scopes=["chat"], tokens_per_minute=100)
    assert ks.verify(secret).scopes == ["chat"]
    for bad in (None, "", secret[:-1] + ("A" if secret[-1] != "A" else "B"), "lp_unknown_x", "garbage"):
        with pytest.raises(AuthError):
            ks.verify(bad)
    ks.record_usage(info.id, "req1", "m", "chat", 5, 7, 12.5, 200)
    rows = ks.usage(info.id)
    assert [(r.tokens_in, r.tokens_out, r.status) for r in rows] == [(5, 7, 200)]
    assert ks.verify(secret).tokens_used == 12
    with pytest.raises(ConfigError):
        ks.create("neg", requests_per_minute=0)


def test_json_log_lines_carry_request_id():
    import logging

    from llmpress.server.logs import JsonFormatter

    rec = logging.LogRecord("llmpress.server", logging.INFO, __file__, 1, "request", None, None)
    rec.request_id, rec.status = "abc123", 200
    line = json.loads(JsonFormatter().format(rec))
    assert line["request_id"] == "abc123" and line["status"] == 200 and line["msg"] == "request"
