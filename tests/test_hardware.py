"""CPU feature decisions are functions of the flags, so every CPU family's choice is tested here."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmpress.hardware import BF16_AUTOCAST_FLAGS, bf16_autocast_pays, cpu_flags, cpu_has_bf16


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, True),  # Intel Sapphire Rapids and later
    ({"avx512f", "avx512_bf16", "avx512_vnni"}, "avx512_bf16" in BF16_AUTOCAST_FLAGS),  # AMD EPYC Zen 4
    ({"avx2", "fma"}, False),
    (None, False),  # flags unreadable: the portable fp32 path
])
def test_bf16_autocast_default_per_cpu_family(flags, expected) -> None:
    assert bf16_autocast_pays(flags) is expected


def test_this_machine_follows_the_table() -> None:
    assert cpu_has_bf16() == bf16_autocast_pays(cpu_flags())


def test_git_commit_dirty_ignores_benchmark_results(tmp_path: Path) -> None:
    """A result written by another benchmark run does not mark the measured code dirty; a code change does."""
    import subprocess

    from llmpress.hardware import git_commit

    def git(*a: str) -> None:
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "r.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path / "src")
    assert clean is not None and "+" not in clean
    (tmp_path / "benchmarks" / "results" / "r.json").write_text('{"new": 1}\n')
    assert git_commit(tmp_path / "src") == clean
    (tmp_path / "src" / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path / "src") == clean + "+dirty"
