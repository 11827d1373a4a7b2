"""Recipes (parsing, composition, registration) and choosing under a quality gate."""

from __future__ import annotations

import pytest


def test_split_and_parse_recipes():
    from llmpress.plan.recipes import parse_recipe, split_recipes

    assert split_recipes("int8-weight-only,int4-weight-only:g64,gptq,qat:g64") == [
        "int8-weight-only", "int4-weight-only:g64,gptq", "qat:g64"]
    assert parse_recipe("bf16+int4-weight-only:g128,gptq") == [("bf16", None), ("int4-weight-only", "g128,gptq")]


def test_unknown_step_is_clear():
    from llmpress.errors import ConfigError
    from llmpress.plan.recipes import parse_recipe

    with pytest.raises(ConfigError, match="unknown recipe step 'int3'") as e:
        parse_recipe("int8-weight-only+int3")
    assert "int4-weight-only" in e.value.fix
    with pytest.raises(ConfigError, match="empty step"):
        parse_recipe("int8-weight-only++fp16")


def test_quant_options():
    from llmpress.errors import ConfigError
    from llmpress.plan.recipes import RecipeContext, quant_options

    ctx = RecipeContext(data="builtin:pydoc", calibration_samples=16)
    assert quant_options("int4-weight-only", "g128,gptq", ctx) == {
        "group_size": 128, "method": "gptq", "calibration": "builtin:pydoc", "samples": 16, "seq_len": 128}
    assert quant_options("int8-static", "smoothquant=false,alpha=0.8", ctx)["smoothquant"] is False
    assert quant_options("qat", "g32,steps=5", ctx) == {"data": "builtin:pydoc", "steps": 5, "group_size": 32}
    with pytest.raises(ConfigError, match="no option 'colour'"):
        quant_options("int8-weight-only", "colour=red", ctx)
    with pytest.raises(ConfigError, match="not a valid"):
        quant_options("int4-weight-only", "group_size=big", ctx)


def test_recipes_compose_with_lineage(tiny):
    from llmpress.plan.recipes import RecipeContext, run_recipe
    from llmpress.registry import get_registry

    art = run_recipe("bf16+int8-weight-only", tiny, RecipeContext())
    assert art.manifest.extra["quantization"]["scheme"] == "int8-weight-only"
    chain = [m.step.params.get("scheme") for m in get_registry().lineage(art.id)]
    assert chain[:2] == ["int8-weight-only", "bf16"]
    assert get_registry().lineage(art.id)[-1].id == tiny.id


def test_quantizing_twice_is_refused(tiny):
    from llmpress.errors import ConfigError
    from llmpress.plan.recipes import RecipeContext, run_recipe

    with pytest.raises(ConfigError, match="already quantized"):
        run_recipe("int8-weight-only+int4-weight-only", tiny, RecipeContext())


def test_register_recipe_joins_the_table(tiny):
    """Another stage adds a step through the public API and composes it with a scheme."""
    from llmpress.artifact import Step, create_artifact
    from llmpress.plan.recipes import RECIPES, RecipeContext, register_recipe, run_recipe
    from llmpress.sources.hf import save_model

    @register_recipe("copy", "re-save the model unchanged (test step)", "none")
    def copy_step(art, arg, ctx):
        model, tok = art.load_model(), art.load_tokenizer()
        with create_artifact(f"{art.name}-copy", Step("copy", {}), parent=art) as w:
            save_model(model, tok, w.path)
        return w.artifact

    try:
        out = run_recipe("copy+int4-weight-only:g32", tiny, RecipeContext())
        assert out.manifest.extra["quantization"]["params"]["group_size"] == 32
    finally:
        RECIPES.pop("copy")


def _cand(recipe, ppl, b1, rss=100.0, error=None):
    from llmpress.plan.pareto import Candidate

    return Candidate(recipe=recipe, artifact_id=recipe, name=recipe, perplexity=ppl, delta_pct=(ppl / 10 - 1) * 100,
                     mb_on_disk=10.0, peak_rss_mb=rss, b1_tok_s=b1, b32_tok_s=b1 * 4, error=error)


def test_choose_respects_gate_and_target():
    from llmpress.plan.pareto import choose, mark_front, parse_quality_drop

    cands = [_cand("base", 10.0, 50, 500), _cand("int8", 10.04, 90, 300), _cand("int4", 10.4, 120, 200),
             _cand("dyn", 30.0, 150, 250), _cand("slow", 10.5, 40, 600)]
    assert choose(cands, "latency", parse_quality_drop("2%")).recipe == "int8"
    assert [c.recipe for c in cands if c.passes_gate] == ["base", "int8"]
    assert choose(cands, "latency", parse_quality_drop("5 %")).recipe == "int4"
    assert choose(cands, "memory", 5.0).recipe == "int4"
    assert choose(cands, "latency", 0.0).recipe == "base"
    front = {cands[i].recipe for i in mark_front(cands, "latency")}
    assert front == {"base", "int8", "int4", "dyn"}


def test_bad_gate_and_target():
    from llmpress.errors import ConfigError
    from llmpress.plan.optimize import OptimizeConfig
    from llmpress.plan.pareto import parse_quality_drop

    with pytest.raises(ConfigError, match="not a percentage"):
        parse_quality_drop("two")
    with pytest.raises(ConfigError, match="unknown target"):
        OptimizeConfig(target="speed").validate()
    with pytest.raises(ConfigError, match="unknown recipe step"):
        OptimizeConfig(recipes=("int8-weight-only", "int2")).validate()
