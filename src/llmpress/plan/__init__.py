"""Plan: recipes (steps composed with `+`), the Pareto front, and the `optimize` job."""

from __future__ import annotations

from llmpress.plan.pareto import TARGETS, Candidate, choose, mark_front, parse_quality_drop
from llmpress.plan.recipes import (
           RECIPES,
           RecipeContext,
           parse_recipe,
           recipe_table,
           register_recipe,
           run_recipe,
)

__all__ = ["TARGETS", "Candidate", "choose", "mark_front", "parse_quality_drop", "RECIPES", "RecipeContext",
           "parse_recipe", "recipe_table", "register_recipe", "run_recipe"]
