"""A/B tests: sticky weighted assignment, feedback rules, the report's statistics on a seeded simulated run,
promotion, and the CLI."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest
from pg import make_artifact
from typer.testing import CliRunner

from llmpress.errors import ConfigError, DataError, NotFoundError, RegistryError


@pytest.fixture
def two_models(fresh_registry):
    from llmpress.ops.deployments import deploy

    a, b = make_artifact(fresh_registry, "model-a"), make_artifact(fresh_registry, "model-b")
    deploy(a.id, "prod", registry=fresh_registry)
    deploy(b.id, "canary", registry=fresh_registry)
    return fresh_registry, a, b


def _simulate(reg, test, accuracy: dict[str, float], n: int, rng: random.Random, start: int = 0,  # type: ignore[no-untyped-def]
              score: bool = False) -> None:
    """n requests from distinct users; each arm answers an item of a labeled set correctly with its measured
    accuracy, and the user rates the answer 1 (correct) or 0; with `score`, 1-5 stars."""
    from llmpress.ops import ab

    for i in range(start, start + n):
        arm = test.assign(f"user-{i}")
        rid = ab.new_response_id()
        ab.record_response(test.name, rid, arm.name, f"user-{i}", status=200 if rng.random() > 0.01 else 500,
                           ttft_ms=rng.uniform(20, 60), latency_ms=rng.uniform(200, 400), tokens_out=32, registry=reg)
        correct = rng.random() < accuracy[arm.name]
        if score:
            rating = float(min(5, max(1, round(rng.gauss(3.0 + 1.5 * correct, 0.8)))))
        else:
            rating = 1.0 if correct else 0.0
        ab.record_feedback(rid, rating=rating, label="correct" if correct else "wrong", registry=reg)


def test_assignment_sticky_and_weighted(two_models) -> None:
    from llmpress.ops import ab

    reg, a, b = two_models
    test = ab.start("exp", ab.parse_arms("prod=90,canary=10"), registry=reg)
    assert [(x.name, x.artifact_id) for x in test.arms] == [("prod", a.id), ("canary", b.id)]
    assert test.alias == "prod"
    users = [f"u{i}" for i in range(20000)]
    first = [test.assign(u).name for u in users]
    assert first == [test.assign(u).name for u in users]  # sticky
    assert 0.085 < first.count("canary") / len(first) < 0.115
    rng = random.Random(0)
    anon = [test.assign(None, rng).name for _ in range(20000)]
    assert 0.085 < anon.count("canary") / len(anon) < 0.115
    assert len({test.assign(None, rng).name for _ in range(200)}) == 2  # random without a user


def test_simulated_run_picks_the_better_arm_at_the_sample_size_it_asked_for(two_models) -> None:
    from llmpress.ops import ab

    reg, _, b = two_models
    accuracy = {"prod": 0.70, "canary": 0.80}  # measured accuracies of the two artifacts on a labeled set
    test = ab.start("quality", ab.parse_arms("prod=50,canary=50"), registry=reg)
    rng = random.Random(5)
    _simulate(reg, test, accuracy, 120, rng)
    early = ab.report("quality", reg)
    assert early.binary and early.comparisons[0].test == "two-proportion z"
    assert early.comparisons[0].n_needed_per_arm is not None
    # keep the run going until every arm has the ratings the report (re-read each round) says it needs
    done, rep = 120, early
    while min(a.feedback_n for a in rep.arms) < (rep.comparisons[0].n_needed_per_arm or 10**9):
        _simulate(reg, test, accuracy, 100, rng, start=done)
        done += 100
        rep = ab.report("quality", reg)
        assert done < 5000
    rep = ab.report("quality", reg)
    comp = rep.comparisons[0]
    assert rep.winner == "canary" and comp.p_value < 0.05 and comp.difference > 0
    assert not comp.underpowered and "underpowered" not in rep.verdict
    assert comp.mde < early.comparisons[0].mde  # more data, smaller detectable effect
    by = {a.arm: a for a in rep.arms}
    for arm, acc in accuracy.items():
        lo, hi = by[arm].feedback_ci95
        assert lo < by[arm].feedback_mean < hi and lo < acc < hi
        assert by[arm].requests > 0 and by[arm].latency_p50_ms <= by[arm].latency_p99_ms
        assert by[arm].tokens_per_s and by[arm].labels.keys() <= {"correct", "wrong"}
    assert sum(a.errors for a in rep.arms) > 0
    ab.stop("quality", promote="canary", registry=reg)
    from llmpress.ops.deployments import alias_target, history

    assert alias_target("prod", reg) == b.id
    assert history("prod", reg)[0].action == "promote"


def test_scores_use_mann_whitney(two_models) -> None:
    from llmpress.ops import ab

    reg, _, _ = two_models
    test = ab.start("stars", ab.parse_arms("prod=1,canary=1"), registry=reg)
    _simulate(reg, test, {"prod": 0.5, "canary": 0.8}, 300, random.Random(7), score=True)
    rep = ab.report("stars", reg)
    assert not rep.binary and rep.comparisons[0].test == "mann-whitney u"
    assert rep.winner == "canary" and rep.comparisons[0].p_value < 0.05


def test_a_significant_but_underpowered_result_says_so() -> None:
    from llmpress.ops.ab import _verdict, compare

    # 40 ratings per arm, 0.55 vs 0.80: significant, but this gap needs more ratings for 80 % power
    c = compare([1.0] * 22 + [0.0] * 18, [1.0] * 32 + [0.0] * 8, True, "canary", "prod")
    assert c.significant and c.n_needed_per_arm > 40 and c.underpowered
    winner, verdict = _verdict("prod", [c])
    assert winner == "canary" and "underpowered" in verdict


def test_no_difference_is_not_significant() -> None:
    from llmpress.ops.ab import compare

    rng = random.Random(3)
    same = [compare([float(rng.random() < 0.5) for _ in range(200)], [float(rng.random() < 0.5) for _ in range(200)],
                    True) for _ in range(40)]
    assert sum(c.significant for c in same) <= 6  # about alpha = 5 % false positives, not more


def test_feedback_and_stop_errors(two_models) -> None:
    from llmpress.ops import ab

    reg, _, _ = two_models
    test = ab.start("fb", ab.parse_arms("prod=1,canary=1"), registry=reg)
    ab.record_response("fb", "resp-1", test.assign("x").name, "x", registry=reg)
    with pytest.raises(NotFoundError, match="no response"):
        ab.record_feedback("resp-unknown", rating=1, registry=reg)
    with pytest.raises(DataError):
        ab.record_feedback("resp-1", registry=reg)
    with pytest.raises(DataError):
        ab.record_feedback("resp-1", rating=float("nan"), registry=reg)
    with pytest.raises(NotFoundError, match="expired") as e:
        ab.record_feedback("resp-1", rating=1, registry=reg, ttl=timedelta(seconds=-1))
    assert e.value.http_status == 410
    assert ab.record_feedback("resp-1", rating=1, comment="good", registry=reg)["arm"] in ("prod", "canary")
    with pytest.raises(NotFoundError, match="no arm 'blue'"):
        ab.stop("fb", promote="blue", registry=reg)
    assert ab.load("fb", reg).status == "running"  # nothing half-done
    ab.stop("fb", registry=reg)
    with pytest.raises(NotFoundError, match="expired"):
        ab.record_feedback("resp-1", rating=0, registry=reg)
    with pytest.raises(RegistryError, match="already stopped"):
        ab.stop("fb", registry=reg)
    with pytest.raises(RegistryError, match="already exists"):
        ab.start("fb", ab.parse_arms("prod=1,canary=1"), registry=reg)
    for bad in ("prod=90", "prod=90,prod=10", "prod=x,canary=1", "prod=0,canary=1", "a b=1,c=2"):
        with pytest.raises(ConfigError):
            ab.parse_arms(bad)
    with pytest.raises(NotFoundError):
        ab.start("ghost-arm", ab.parse_arms("prod=1,nosuch=1"), registry=reg)
    with pytest.raises(NotFoundError):
        ab.report("nosuch", reg)


def test_ab_tables_on_both_backends(backend_registry) -> None:
    from llmpress.ops import ab
    from llmpress.ops.deployments import deploy

    reg = backend_registry
    deploy(make_artifact(reg, "x").id, "prod", registry=reg)
    deploy(make_artifact(reg, "y").id, "canary", registry=reg)
    test = ab.start("t", ab.parse_arms("prod=50,canary=50"), registry=reg)
    _simulate(reg, test, {"prod": 0.2, "canary": 0.9}, 60, random.Random(5))
    rep = ab.report("t", reg)
    assert sum(a.requests for a in rep.arms) == 60 and rep.winner == "canary"
    assert [t.name for t in ab.running(reg)] == ["t"]


def test_cli(two_models, tmp_path) -> None:
    from llmpress.cli.main import _register_all, app
    from llmpress.ops import ab

    reg, a, b = two_models
    _register_all()
    run = CliRunner().invoke
    r = run(app, ["ab", "start", "cli-exp", "--arms", "prod=90,canary=10", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["alias"] == "prod"
    _simulate(reg, ab.load("cli-exp", reg), {"prod": 0.7, "canary": 0.8}, 50, random.Random(1))
    png = tmp_path / "ab.png"
    r = run(app, ["ab", "report", "cli-exp", "--json", "--png", str(png)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [x["arm"] for x in data["arms"]] == ["prod", "canary"] and png.read_bytes()[:4] == b"\x89PNG"
    r = run(app, ["ab", "report", "cli-exp"])
    assert r.exit_code == 0 and "canary vs prod" in r.stdout
    r = run(app, ["ab", "stop", "cli-exp", "--promote", "green"])
    assert r.exit_code == NotFoundError.exit_code and len(r.output.strip().splitlines()) == 1
    r = run(app, ["ab", "start", "bad", "--arms", "prod=1"])
    assert r.exit_code == ConfigError.exit_code and "two distinct arms" in r.output
    r = run(app, ["ab", "stop", "cli-exp", "--promote", "canary"])
    assert r.exit_code == 0, r.output
    from llmpress.ops.deployments import alias_target

    assert alias_target("prod", reg) == b.id
    assert json.loads(run(app, ["ab", "list", "--json"]).stdout)[0]["promoted"] == "canary"
