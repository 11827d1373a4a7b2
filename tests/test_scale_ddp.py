"""`llmpress tune full ... --processes 2` and `llmpress distill ... --processes 2`: two data-parallel ranks (gloo on loopback, HF Trainer / accelerate DDP)
against one process at the same global batch, on tiny-llama. Slow: two ~1 min training runs.

Stated tolerance: at equal global batch the two runs see the same examples per step but in a different
order (DistributedSampler vs RandomSampler) and weight tokens per rank, so the curves are close, not
identical: every train-loss point within 0.25 nats, final eval loss within 3 %, and both runs learn.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def corpus(path: Path) -> Path:
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog python code data model train loss step batch".split()
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(80)))
    return path


def tune(data: Path, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "llmpress.cli.main", "tune", "full", "builtin:tiny-llama", "--data", str(data),
           "--max-steps", "6", "--batch-size", "4", "--seq-len", "32", "--lr", "1e-3", "--bf16", "off", "--json",
           *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_two_processes_match_one_at_equal_global_batch(tmp_path: Path, tiny: Any, fresh_registry: Any) -> None:
    from sqlalchemy import func, select

    from llmpress.registry.tables import ArtifactRow

    def rows() -> int:
        with fresh_registry.session() as s:
            return int(s.scalar(select(func.count()).select_from(ArtifactRow)))

    data = corpus(tmp_path / "train.txt")
    one = tune(data)
    n_before, rows_before = len(list((Path(one["path"]).parent).iterdir())), rows()
    two = tune(data, "--processes", "2")
    m1, m2 = one["metrics"]["tune"], two["metrics"]["tune"]
    assert m2["processes"] == 2 and m2["global_batch"] == 4 and "processes" not in m1
    assert m1["steps"] == m2["steps"] == 6
    for (s1, l1), (s2, l2) in zip(m1["train_curve"], m2["train_curve"], strict=True):
        assert s1 == s2 and abs(l1 - l2) < 0.25, (m1["train_curve"], m2["train_curve"])
    assert abs(m1["eval_loss_after"] - m2["eval_loss_after"]) / m1["eval_loss_after"] < 0.03
    assert m2["eval_loss_after"] < m2["eval_loss_before"] - 0.3 and m1["eval_loss_after"] < m1["eval_loss_before"] - 0.3
    # the 2-rank run wrote exactly one artifact directory and printed one result
    assert len(list((Path(one["path"]).parent).iterdir())) == n_before + 1
    assert rows() == rows_before + 1
    assert Path(two["path"]).is_dir() and two["id"] != one["id"]


def test_processes_must_split_the_batch(tmp_path: Path, tiny: Any) -> None:
    data = corpus(tmp_path / "train.txt")
    r = subprocess.run([sys.executable, "-m", "llmpress.cli.main", "tune", "full", "builtin:tiny-llama", "--data",
                        str(data), "--batch-size", "3", "--processes", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "split evenly" in r.stderr


def test_distill_with_two_processes_matches_one(tmp_path: Path, tiny: Any) -> None:
    data = corpus(tmp_path / "train.txt")

    def distill(*extra: str) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "llmpress.cli.main", "distill", "--teacher", "builtin:tiny-llama",
               "--student-layers", "1", "--data", str(data), "--steps", "6", "--batch", "4", "--seq-len", "32",
               "--lr", "1e-3", "--json", *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout)

    one, two = distill(), distill("--processes", "2")
    assert two["processes"] == 2 and two["global_batch"] == 4 and one["steps"] == two["steps"] == 6
    assert abs(one["train_loss"] - two["train_loss"]) / one["train_loss"] < 0.03
    assert Path(two["path"]).is_dir() and two["id"] != one["id"]
