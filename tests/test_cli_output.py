"""CLI output without a terminal (CI logs, `| tee`): full-width tables, periodic progress lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def run_captured(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The CLI with stdout and stderr captured (pipes, not a TTY) and no COLUMNS hint."""
    e = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "llmpress.cli.main", *args], capture_output=True, text=True,
                          env={**e, **env}, timeout=600)


def test_wide_table_is_not_cut_to_80_columns() -> None:
    r = run_captured("optimize", "--list-recipes")
    assert r.returncode == 0, r.stderr
    # the prune row's argument help is ~90 characters: one line, whole, no "…"
    arg_help = "heads-25%, mlp-25%, structured-25%, layers-4, unstructured-50%[,global], 2of4, recover-N"
    assert any(arg_help in line for line in r.stdout.splitlines()), r.stdout
    assert "…" not in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) > 120


def test_long_work_logs_progress_lines(tiny) -> None:
    r = run_captured("prune", str(tiny.path), "--method", "layers", "--layers", "1", "--calibration-samples", "8",
                     "--seq-len", "64", LLMPRESS_PROGRESS_INTERVAL="0.05")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if re.match(r"^\d\d:\d\d:\d\d .+: \d+(/\d+ \(\d+ %\))?, ", ln)]
    assert lines, r.stderr
    assert any(ln.endswith(", done") for ln in lines)  # each task's last line says it finished
    assert "━" not in r.stderr  # no bar drawing in a log
