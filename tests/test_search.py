"""`optimize --search` on tiny-llama: space parsing, the n-d Pareto front, a tiny-budget run end to end,
and a budget too small for the baseline."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


def test_space_enumeration_and_parsing():
    from llmpress.errors import ConfigError
    from llmpress.plan.search import SearchSpace, parse_space

    sp = SearchSpace()
    rs = sp.recipes()
    # 4 structural prefixes (none, prune, prune+recover, distill) x 6 quantizations (none, int8, int4 g32/g64 x
    # rtn/gptq), minus the untouched baseline
    assert len(rs) == 4 * 6 - 1 and len(set(rs)) == len(rs)
    assert "int4-weight-only:g32" in rs and "prune:structured-25%,recover-50+int4-weight-only:g64,gptq" in rs
    assert "distill:layers-50%,steps-100+int8-weight-only" in rs
    p = parse_space("schemes=int4-weight-only;groups=32,128;gptq=no;prune=0;distill=0")
    assert p.recipes() == ["int4-weight-only:g32", "int4-weight-only:g128"]
    for bad, needle in [("schemes=int3", "unknown scheme"), ("prune=150%", "outside"), ("nope=1", "no axis"),
                        ("groups=x", "integers"), ("schemes=none;prune=0;distill=0", "nothing to try")]:
        with pytest.raises(ConfigError, match=needle):
            parse_space(bad)


def test_pareto_front_nd():
    from llmpress.plan.search import pareto_front_nd

    pts = [(1.0, 1.0, 1.0), (2.0, 0.5, 1.0), (0.5, 0.5, 0.5), (1.0, 1.0, 0.9), (3.0, 3.0, 3.0)]
    assert pareto_front_nd(pts) == [4]
    assert pareto_front_nd(pts[:4]) == [0, 1]


@pytest.fixture(scope="module")
def searched(tiny, tmp_path_factory):
    from llmpress.cli.main import _register_all, app

    _register_all()
    out = tmp_path_factory.mktemp("search")
    res = CliRunner().invoke(app, [
        "optimize", "builtin:tiny-llama", "--search", "--budget-minutes", "10", "--max-quality-drop", "100",
        "--task", "builtin:pydoc-mc", "--task-limit", "4",
        "--space", "schemes=none,int8-weight-only,int4-weight-only;groups=32;gptq=no;prune=0,25%;recover=0;distill=0",
        "--eta", "2", "--max-tokens", "128", "--proxy-tokens", "64", "--batch-sizes", "1", "--new-tokens", "4",
        "--repeats", "1", "--samples", "4", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), out


def test_search_end_to_end(searched, tiny):
    from llmpress.registry import get_registry

    data, out = searched
    for f in ("report.md", "report.html", "search.json", "pareto.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 100
    cands = data["candidates"]
    assert data["space_size"] == len(cands) == 5
    built = [c for c in cands if c["rung"] >= 0]
    assert built, cands
    reg = get_registry()
    for c in built:  # every candidate is an artifact whose lineage leads back to the model
        chain = [m.id for m in reg.lineage(c["artifact_id"])]
        assert chain[-1] == tiny.id and len(chain) == c["recipe"].count("+") + 2
    full = [c for c in [data["baseline"], *cands] if c["rung"] == 1]
    # the budget outlasts the planned ceil(built / eta) survivors: every candidate past the proxy gate is measured
    assert len(full) >= 1 + -(-len(built) // 2)
    for c in cands:
        if c["rung"] == 0:
            assert c["reason"].startswith(("halving", "proxy", "budget")), c
            assert not c["reason"].startswith("halving"), "budget was left, yet a ranked candidate was skipped"
    win = data["winner"]
    assert win is not None and win["status"] == "winner" and win["passes"]
    assert win["b1_tok_s"] == max(c["b1_tok_s"] for c in full if c["passes"])
    assert any(c["on_front"] for c in full)
    for c in full:  # judged on the task: score and drop in points measured for every survivor
        assert c["task_score"] is not None and c["task_drop_pts"] is not None
    assert "task points" in data["why"][0]
    md = (out / "report.md").read_text()
    assert "## Explored space" in md and "## Why the winner won" in md and win["recipe"] in md
    assert json.loads((out / "search.json").read_text())["machine"]["cpu_model"] and "Machine: " in md
    assert data["why"][1].startswith(f"`{win['recipe']}` wins")


def test_search_constraints_reject(searched):
    """The same measured candidates under a 1 MB memory limit: every one is out, with the reason."""
    from llmpress.plan.search import SearchCandidate, SearchConfig, _decide

    data, _ = searched
    fields = set(SearchCandidate.__dataclass_fields__)
    cands = [SearchCandidate(**{k: v for k, v in c.items() if k in fields}) for c in [data["baseline"], *data["candidates"]]]
    winner, why = _decide(cands, SearchConfig(task="builtin:pydoc-mc", max_quality_drop=100, max_memory_mb=1.0))
    assert winner is None and "relax" in why[-1]
    assert all("peak RSS" in c.reason for c in cands if c.rung == 1)


def test_full_measurements_rank_proxy_inside_the_gate_before_size():
    """A candidate whose proxy is inside the quality gate is measured before a smaller one that is not."""
    from llmpress.plan.search import SearchCandidate, SearchConfig, rank_for_full

    cands = [SearchCandidate("int4-g64-gptq", proxy_delta_pct=4.4, mb_on_disk=92.0, proxy_perplexity=27.2),
             SearchCandidate("int8", proxy_delta_pct=-0.7, mb_on_disk=139.0, proxy_perplexity=25.9),
             SearchCandidate("int4-g32", proxy_delta_pct=-1.6, mb_on_disk=98.6, proxy_perplexity=25.7),
             SearchCandidate("prune+int4", proxy_delta_pct=3.2, mb_on_disk=82.0, proxy_perplexity=26.9)]
    order = [c.recipe for c in rank_for_full(cands, SearchConfig(max_quality_drop=2.0))]
    assert order == ["int4-g32", "int8", "prune+int4", "int4-g64-gptq"]
    # judged on a task (points, not % perplexity), size alone orders them
    order = [c.recipe for c in rank_for_full(cands, SearchConfig(max_quality_drop=2.0, task="builtin:pydoc-mc"))]
    assert order == ["prune+int4", "int4-g64-gptq", "int4-g32", "int8"]


def test_proxy_perplexity_samples_the_whole_stream(tiny):
    """sample_tokens scores windows spread over the max_tokens stream, not its first tokens."""
    from llmpress.data import load_corpus
    from llmpress.evaluate.quality import perplexity

    model, tok = tiny.load_model(), tiny.load_tokenizer()
    texts = load_corpus("builtin:pydoc").split("eval")
    full = perplexity(model, tok, texts, 64, 64, 1024)
    spread = perplexity(model, tok, texts, 64, 64, 1024, sample_tokens=256)
    head = perplexity(model, tok, texts, 64, 64, 256)
    assert 200 <= spread["tokens"] <= 320 and spread["tokens"] < full["tokens"] // 2
    assert spread["perplexity"] != head["perplexity"]  # other windows than the first 256 tokens


def test_budget_too_small(tiny):
    from llmpress.errors import ConfigError
    from llmpress.plan.search import BudgetError, SearchConfig, parse_space, search

    space = parse_space("schemes=int8-weight-only;prune=0;distill=0")
    with pytest.raises(BudgetError, match="too small") as e:
        search(SearchConfig(model="builtin:tiny-llama", budget_minutes=0.001, space=space, max_tokens=128,
                            proxy_tokens=64))
    assert "raise --budget-minutes to at least" in e.value.one_line()
    with pytest.raises(ConfigError, match="no time"):
        SearchConfig(budget_minutes=0).validate()


def test_default_recipes_include_prune_distill_and_int4_g32():
    from llmpress.plan.optimize import DEFAULT_RECIPES, OptimizeConfig

    OptimizeConfig().validate()  # every default recipe parses
    assert "int4-weight-only:g32" in DEFAULT_RECIPES
    assert any(r.startswith("prune:") for r in DEFAULT_RECIPES) and any(r.startswith("distill:") for r in DEFAULT_RECIPES)


def test_optimize_gate_on_task_drop():
    """With --task the gate is the task-score drop in points, not the perplexity change."""
    from llmpress.plan.optimize import _task_drops
    from llmpress.plan.pareto import Candidate, choose

    def cand(recipe, ppl_delta, score, tok_s):
        return Candidate(recipe=recipe, artifact_id=recipe, name=recipe, perplexity=10.0, delta_pct=ppl_delta,
                         mb_on_disk=1.0, b1_tok_s=tok_s, task_score=score)

    cands = [cand("baseline", 0.0, 0.60, 10.0), cand("fast-bad-task", 0.5, 0.40, 30.0),
             cand("ppl-worse-task-ok", 9.0, 0.59, 20.0)]
    _task_drops(cands)
    assert [c.task_drop_pts for c in cands] == pytest.approx([0.0, 20.0, 1.0])
    assert choose(cands, "latency", 2.0, on_task=True).recipe == "ppl-worse-task-ok"
    assert choose(cands, "latency", 2.0).recipe == "fast-bad-task"
