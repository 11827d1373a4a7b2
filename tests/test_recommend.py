"""`plan --requirements`: the three example files give different, justified answers on measured numbers;
contradictory or malformed requirements are one clear error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def measured(tiny, tmp_path_factory):
    """A registry of its own holding tiny-llama with a real speed and task measurement."""
    from llmpress.evaluate import EvalConfig, SpeedConfig, evaluate_artifact

    old = os.environ.get("LLMPRESS_DATABASE_URL")
    os.environ["LLMPRESS_DATABASE_URL"] = f"sqlite:///{tmp_path_factory.mktemp('reg') / 'registry.db'}"
    try:
        evaluate_artifact(tiny, EvalConfig(quality=False, size=False, task="builtin:pydoc-mc", task_limit=4,
                                           speed_config=SpeedConfig(batch_sizes=(1, 32), new_tokens=8, repeats=1,
                                                                    warmup=0)))
        yield tiny
    finally:
        if old is None:
            os.environ.pop("LLMPRESS_DATABASE_URL", None)
        else:
            os.environ["LLMPRESS_DATABASE_URL"] = old


def _req(name: str):
    from llmpress.plan.recommend import load_requirements

    req = load_requirements(EXAMPLES / name)
    # tiny-llama has random weights (its task score is chance) and its latency on a shared test machine is
    # noise: the test drops the quality floor and the latency limits; the answers turn on privacy, traffic, cost
    req.quality.min_score = None
    req.latency.p95_ttft_ms = req.latency.min_tok_s = None
    return req


def test_three_examples_give_different_justified_answers(measured):
    from llmpress.plan.recommend import recommend

    private = recommend(_req("requirements-privacy.yaml"))
    spiky = recommend(_req("requirements-spiky.yaml"))
    steady = recommend(_req("requirements-steady.yaml"))
    assert private.options[0].form == "local server" and private.options[0].artifact_id == measured.id
    assert {o.form for o in private.options} <= {"local server", "edge export"}
    for o in private.rejected:
        if o.form in ("cloud API", "self-hosted cloud", "hybrid"):
            assert any(r.startswith("privacy") for r in o.rejected), o
    assert "privacy" in private.summary and private.break_even is None  # no API comparison when data stays
    assert spiky.options[0].form == "cloud API"
    sh = next(o for o in spiky.options + spiky.rejected if o.form == "self-hosted cloud")
    assert sh.figures["cost_usd_month"].value > spiky.options[0].figures["cost_usd_month"].value
    # High steady volume: the answer turns on measured throughput. A replica full of requests costs less
    # per request than the API unless the machine measured is pathologically slow (a shared CI box at
    # load 20 measures tiny-llama ~100x below its quiet speed); then the API must win and say why.
    sh = min((o for o in steady.options + steady.rejected if o.form == "self-hosted cloud"),
             key=lambda o: o.figures["cost_usd_month"].value)
    api = next(o for o in steady.options + steady.rejected if o.form == "cloud API" and "small" in o.model)
    if sh.figures["cost_usd_month"].value >= api.figures["cost_usd_month"].value:
        assert steady.options[0].form == "cloud API" and "never pays off" in steady.break_even
        pytest.skip(f"this machine measured tiny-llama too slowly for self-hosting to win "
                    f"(${sh.figures['cost_usd_month'].value:,.0f} vs API ${api.figures['cost_usd_month'].value:,.0f})")
    assert steady.options[0].form == "self-hosted cloud"
    assert steady.options[0].figures["cost_usd_month"].value < api.figures["cost_usd_month"].value
    assert steady.break_even and "self-hosting pays off above" in steady.break_even
    assert len({private.options[0].form, spiky.options[0].form, steady.options[0].form}) == 3


def test_every_figure_says_where_it_comes_from(measured):
    from llmpress.plan.recommend import recommend

    rec = recommend(_req("requirements-privacy.yaml"))
    local = rec.options[0]
    assert local.figures["tok_s"].kind == "measured" and measured.id[:8] in local.figures["tok_s"].source
    assert "eval #" in local.figures["tok_s"].source
    assert local.figures["p95_ttft_ms"].kind == "derived" and "assumed" in local.figures["p95_ttft_ms"].source
    assert local.figures["quality"].kind == "measured"  # the pydoc-mc score recorded by the fixture
    assert local.figures["cost_usd_month"].kind == "assumed"
    for o in rec.options + rec.rejected:
        assert all(f.kind in ("measured", "derived", "assumed", "unknown") for f in o.figures.values())


def test_latency_limit_rejects_with_reason(measured):
    from llmpress.plan.recommend import recommend

    req = _req("requirements-privacy.yaml")
    req.latency.p95_ttft_ms = 0.001
    req.latency.min_tok_s = 1e9
    rec = recommend(req)
    assert not rec.options
    local = next(o for o in rec.rejected if o.form == "local server")
    assert any(r.startswith("p95 TTFT") for r in local.rejected) and any("tok/s <" in r for r in local.rejected)


def test_quality_floor_rejects_with_reason(measured):
    from llmpress.plan.recommend import recommend

    req = _req("requirements-privacy.yaml")
    req.quality.min_score = 1.0
    score = measured.manifest.metrics["task"]["score"]
    rec = recommend(req)
    local = next(o for o in rec.options + rec.rejected if o.form == "local server")
    if score < 1.0:
        assert any("builtin:pydoc-mc score" in r for r in local.rejected)
        assert "no option meets every requirement" in rec.summary


@pytest.mark.parametrize("text, needle", [
    ("privacy: {data_may_leave: false}\nhardware: {cores: 0}\ntraffic: {requests_per_day: 10}\n",
     "privacy.data_may_leave is false but hardware.cores is 0"),
    ("traffic: {requests_per_day: 10}\nbudget: {usd_per_month: 0}\n", "budget.usd_per_month is 0"),
    ("privacy: {data_may_leave: true}\n", "traffic: Field required"),
    ("traffic: {requests_per_day: 10, tokens_inn: 5}\n", "traffic.tokens_inn: Extra inputs"),
    ("traffic: {requests_per_day: -1}\n", "traffic.requests_per_day"),
    ("- just\n- a list\n", "not a mapping"),
    ("traffic: {requests_per_day: 10\n", "not valid YAML"),
])
def test_bad_requirements_are_one_clear_error(tmp_path, text, needle):
    from llmpress.errors import LlmpressError
    from llmpress.plan.recommend import load_requirements

    p = tmp_path / "req.yaml"
    p.write_text(text)
    with pytest.raises(LlmpressError) as e:
        load_requirements(p)
    assert needle in e.value.one_line()


def test_plan_cli(measured):
    from llmpress.cli.main import _register_all, app

    _register_all()
    res = CliRunner().invoke(app, ["plan", "--requirements", str(EXAMPLES / "requirements-spiky.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["options"][0]["form"] == "cloud API" and data["options"][0]["figures"]["cost_usd_month"]["kind"]
    res = CliRunner().invoke(app, ["plan", "--requirements", str(EXAMPLES / "requirements-steady.yaml")])
    assert res.exit_code == 0 and "break-even" in res.output and "self-hosted cloud" in res.output
    res = CliRunner().invoke(app, ["plan", "--requirements", str(EXAMPLES / "nope.yaml")])
    assert res.exit_code != 0 and "does not exist" in res.output
