"""Recipe steps for the compress stages other than quantize: `prune:ARG` and `distill:ARG`.

They live in `plan` (not in `compress`) so the dependency points one way: plan uses compress,
compress never imports plan. The ARG parsers stay with their stage (`compress.*.recipes`).
"""

from __future__ import annotations

from llmpress.artifact import Artifact
from llmpress.compress.distill import distill
from llmpress.compress.distill.recipes import parse_distill_arg
from llmpress.compress.prune import prune
from llmpress.compress.prune.recipes import parse_prune_arg
from llmpress.plan.recipes import RecipeContext, register_recipe


@register_recipe("prune", "prune: heads / MLP neurons removed, layers dropped, or sparsity masks",
                 "heads-25%, mlp-25%, structured-25%, layers-4, unstructured-50%[,global], 2of4, recover-N")
def prune_step(art: Artifact, arg: str | None, ctx: RecipeContext) -> Artifact:
    cfg = parse_prune_arg(arg)
    cfg.data = ctx.data
    cfg.calibration_samples = ctx.calibration_samples
    cfg.seq_len = ctx.calibration_seq_len
    return prune(art, cfg, progress=ctx.progress)


@register_recipe("distill", "distil into a layer subset of the input model (causal LM, corpus of the run)",
                 "layers-N|P%, steps-N, alpha-A, T-T")
def distill_step(art: Artifact, arg: str | None, ctx: RecipeContext) -> Artifact:
    from llmpress.sources.hf import read_config

    n = int(read_config(art.path).get("num_hidden_layers", 2))
    cfg = parse_distill_arg(arg, n)
    cfg.data = ctx.data
    return distill(art, cfg, progress=ctx.progress)
