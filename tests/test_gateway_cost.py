"""Cost forecasts (`llmpress cost estimate`) and the cost arithmetic, on a real registry file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SPEED = {"speed": {"ttft_s": {"median": 0.128}, "ttft_prompt_tokens": 128,
                   "decode": {"b1": {"tok_s": {"median": 40.0}}, "b8": {"tok_s": {"median": 100.0}}}}}


def test_cost_is_exact_integer_nano_usd():
    from llmpress.registry.cost import cost_nusd

    assert cost_nusd(1_000_000, 0, 0.15, 0.60) == 150_000_000  # 1 Mtok at $0.15 = 15 cents
    assert cost_nusd(3, 7, 0.15, 0.60) == 4650  # 3 x 0.15e-6 + 7 x 0.6e-6 USD = 4.65e-6 USD
    assert sum(cost_nusd(1000, 1000, 2.5, 10.0) for _ in range(1000)) == 1000 * 12_500_000


def test_forecast_math_and_break_even():
    from llmpress.gateway.config import TargetConfig
    from llmpress.gateway.forecast import Workload, forecast

    cheap = TargetConfig(name="mini", url="http://x/v1", models=["m"],
                         price={"input_per_mtok": 0.15, "output_per_mtok": 0.60})
    dear = TargetConfig(name="big", url="http://x/v1", models=["m"], price={"input_per_mtok": 5, "output_per_mtok": 15})
    w = Workload(1000, 500, 200, 1200, 600, growth_pct_month=10)
    res = forecast([cheap, dear], [("tiny", SPEED), ("unmeasured", {})], w, usd_per_hour=0.40, utilisation=0.7)
    opts = {o["name"]: o for o in res["options"]}
    assert opts["mini"]["monthly_usd"][0] == pytest.approx(1000 * 30.42 * 1.95e-4)
    assert opts["mini"]["monthly_usd"][11] == pytest.approx(opts["mini"]["monthly_usd"][0] * 1.1 ** 11)
    assert sum(opts["mini"]["monthly_usd_p95"]) > opts["mini"]["total_usd"]
    host = opts["tiny"]
    # 500 prompt tokens at 1000 tok/s + 200 output tokens at 100 tok/s = 2.5 machine-seconds per request
    assert host["detail"]["requests_per_day_per_machine"] == pytest.approx(86400 * 0.7 / 2.5)
    assert host["monthly_usd"][0] == pytest.approx(0.40 * 730)
    assert res["skipped_artifacts"] == ["unmeasured"]
    be = {x["api"]: x for x in res["break_even"]}
    assert be["big"]["requests_per_day"] == pytest.approx(0.40 * 730 / (30.42 * 5.5e-3))
    assert be["mini"]["requests_per_day"] is None and "API is cheaper" in be["mini"]["note"]


def test_cost_estimate_cli(tmp_path, tiny, fresh_registry):
    from llmpress.registry.tables import ArtifactRow

    fresh_registry.add_artifact(tiny)
    with fresh_registry.session.begin() as s:
        s.get(ArtifactRow, tiny.id).metrics = SPEED
    cfg = tmp_path / "g.yaml"
    cfg.write_text("targets:\n  - name: cloud\n    url: https://api.example.com/v1\n    models: [m]\n"
                   "    price: {input_per_mtok: 5, output_per_mtok: 15}\n")
    cmd = [sys.executable, "-m", "llmpress.cli.main", "cost", "estimate", "--requests-per-day", "5000",
           "--input-tokens", "500,1200", "--output-tokens", "200", "--growth", "5", "--machine-usd-per-hour", "0.4",
           "--config", str(cfg), "--out", str(tmp_path / "est")]
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    kinds = {o["name"]: o["kind"] for o in res["options"]}
    assert kinds["cloud"] == "api" and any(k == "self-host" and tiny.name in n for n, k in kinds.items())
    assert res["break_even"][0]["requests_per_day"] > 0
    assert (tmp_path / "est" / "estimate.png").stat().st_size > 0
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "break-even" in r.stdout
    bad = subprocess.run([*cmd[:7], "--input-tokens", "500,100", *cmd[9:]], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "P95 >= MEAN" in bad.stderr and "Traceback" not in bad.stderr
