"""`llmpress optimize` end to end on tiny-llama: report files, gate, chosen artifact, CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def optimized(tiny, tmp_path_factory):
    """One small optimize run through the CLI, shared by the tests below."""
    from llmpress.cli.main import _register_all, app

    _register_all()
    out = tmp_path_factory.mktemp("opt")
    res = CliRunner().invoke(app, ["optimize", "builtin:tiny-llama", "--recipes",
                                   "int8-weight-only,int4-weight-only:g48,gptq",
                                   "--max-tokens", "256", "--batch-sizes", "1", "--new-tokens", "8",
                                   "--repeats", "1", "--samples", "4", "--max-quality-drop", "1000%",
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), out


def test_optimize_cli_writes_report_and_chooses(optimized):
    from llmpress.registry import get_registry

    data, out = optimized
    for f in ("report.md", "report.html", "pareto.png", "optimize.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 100
    cands = {c["recipe"]: c for c in data["candidates"]}
    assert list(cands) == ["baseline", "int8-weight-only", "int4-weight-only:g48,gptq"]
    # The bad group size is reported as a failed recipe, not a crash, and left no artifact.
    assert "not supported" in cands["int4-weight-only:g48,gptq"]["error"]
    base = cands["baseline"]["perplexity"]
    for c in ("int8-weight-only",):
        got = cands[c]
        assert abs(got["delta_pct"] - (got["perplexity"] / base - 1) * 100) < 1e-6
        assert got["b1_tok_s"] > 0 and got["mb_on_disk"] < cands["baseline"]["mb_on_disk"]
        row = get_registry().get(got["artifact_id"])
        assert row.metrics["quality"]["perplexity"] == got["perplexity"]
    chosen = data["chosen"]
    assert chosen is not None and data["serve"] == f"llmpress serve {chosen['artifact_id']}"
    ok = [c for c in data["candidates"] if c["passes_gate"]]
    assert chosen["b1_tok_s"] == max(c["b1_tok_s"] for c in ok)
    md = (out / "report.md").read_text()
    assert "Chosen" in md and chosen["artifact_id"] in md and "| recipe |" in md
    # its speeds belong to a CPU: the report names it (model, flags, threads, torch, commit)
    machine = json.loads((out / "optimize.json").read_text())["machine"]
    assert machine["cpu_model"] and "Machine: " in md


def test_gate_on_measured_candidates(optimized):
    """The same measured candidates with a 0 % gate: only those no worse than the baseline pass."""
    from llmpress.plan.pareto import Candidate, choose

    fields = set(Candidate.__dataclass_fields__)
    cands = [Candidate(**{k: v for k, v in c.items() if k in fields}) for c in optimized[0]["candidates"]]
    chosen = choose(cands, "latency", 0.0)
    passing = [c for c in cands if c.passes_gate]
    assert cands[0].passes_gate and all(c.delta_pct <= 0 for c in passing)
    assert all(not c.passes_gate for c in cands if c.error or c.delta_pct > 0)
    assert chosen is not None and chosen.b1_tok_s == max(c.b1_tok_s for c in passing)


def test_optimize_bad_input_is_one_line(tiny):
    from llmpress.cli.main import _register_all, app

    _register_all()
    res = CliRunner().invoke(app, ["optimize", "builtin:tiny-llama", "--recipes", "int2", "--json"])
    assert res.exit_code == 6
    assert "unknown recipe step 'int2'" in res.output
    res = CliRunner().invoke(app, ["optimize", "builtin:tiny-llama", "--max-quality-drop", "lots"])
    assert res.exit_code == 6 and "not a percentage" in res.output
