"""The CLI: bad inputs answer with one line and a non-zero exit, and register nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def llmpress(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "llmpress.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def _artifact_ids() -> set[str]:
    r = llmpress("artifacts", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {a["id"] for a in json.loads(r.stdout)}


@pytest.fixture
def corrupt_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corrupt"
    d.mkdir()
    (d / "llmpress.json").write_text("{broken")
    return d


def test_bad_inputs_one_line_nonzero_nothing_new(tiny, tmp_path: Path, corrupt_dir: Path) -> None:
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((tiny.path / f).read_bytes())
    unsupported = tmp_path / "unsupported"
    unsupported.mkdir()
    (unsupported / "config.json").write_text('{"architectures": ["WhisperForConditionalGeneration"], '
                                             '"model_type": "whisper"}')
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    before = _artifact_ids()
    cases = {
        "missing path": ["eval", str(tmp_path / "nope"), "--no-speed"],
        "corrupt manifest": ["eval", str(corrupt_dir), "--no-speed"],
        "unknown built-in": ["eval", "builtin:gpt-17", "--no-speed"],
        "unsupported architecture": ["eval", str(unsupported), "--no-speed"],
        "empty corpus": ["eval", "builtin:tiny-llama", "--data", str(empty), "--no-speed"],
        "missing tokenizer": ["eval", str(no_tok), "--no-speed"],
        "offline hub id": ["eval", "someorg/somemodel", "--no-speed"],
    }
    for what, args in cases.items():
        r = llmpress(*args)
        assert r.returncode != 0, what
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (what, r.stderr)
        assert "Traceback" not in r.stderr
    assert _artifact_ids() == before
    assert "offline" in llmpress("eval", "someorg/somemodel").stderr


def test_eval_json_and_artifacts_commands(tiny) -> None:
    r = llmpress("eval", "builtin:tiny-llama", "--json", "--max-tokens", "200", "--window", "64", "--stride", "64",
                 "--batch-sizes", "1", "--new-tokens", "3", "--repeats", "1")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["quality"]["tokens"] == 200 and data["speed"]["decode"]["b1"]["tok_s"]["median"] > 0
    assert data["size"]["params"] > 1_000_000
    show = llmpress("artifacts", "show", data["id"])
    assert json.loads(show.stdout)["manifest"]["metrics"]["quality"]["tokens"] == 200
    assert llmpress("artifacts", "lineage", data["id"]).returncode == 0
    assert "tiny-llama" in llmpress("models", "list").stdout


def test_bench_writes_report_and_plot(tiny, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    r = llmpress("bench", "builtin:tiny-llama", str(tiny.path), "--out", str(out), "--max-tokens", "200",
                 "--window", "64", "--stride", "64", "--batch-sizes", "1,2", "--new-tokens", "3", "--repeats", "1",
                 "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["rows"]) == 2
    assert (out / "report.md").read_text().count("|") > 20
    png = out / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
