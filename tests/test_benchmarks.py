"""Benchmark scripts record the machine and the command that produced each result."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")))
def test_every_script_records_machine_and_command(script: str) -> None:
    tree = ast.parse((BENCH / script).read_text())
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"benchmark_record", "machine_summary"} <= called, f"{script} must write machine_info() to JSON and markdown"


def test_machine_summary_names_cpu_flags_threads_torch_commit() -> None:
    from llmpress.hardware import benchmark_record, machine_summary

    rec = benchmark_record(["benchmarks/x.py", "--steps", "3"])
    assert rec["command"] == "benchmarks/x.py --steps 3"
    m = rec["machine"]
    line = machine_summary(m)
    for key in ("cpu_model", "threads", "torch"):
        assert str(m[key]) in line
    assert all(f in line for f in m["flags"])


@pytest.mark.slow
def test_tuning_benchmark_bf16_side_by_side(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, str(BENCH / "tuning.py"), "--model", "builtin:tiny-llama", "--steps", "1",
                        "--methods", "lora", "--bf16", "both", "--seq-len", "128", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["machine"]["cpu_model"] and "tuning.py" in res["command"]
    assert {k: v["bf16"] for k, v in res["methods"].items()} == {"lora bf16=on": True, "lora bf16=off": False}
    md = (tmp_path / "results.md").read_text()
    assert "Machine: " in md and "| lora | on |" in md and "| lora | off |" in md
