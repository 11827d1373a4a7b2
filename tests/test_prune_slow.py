"""`llmpress prune builtin:smollm2-135m --method structured ...` then `llmpress eval` (slow: real model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def llmpress(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "llmpress.cli.main", *args], capture_output=True, text=True,
                       env=dict(os.environ, COLUMNS="200"), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_structured_prune_then_eval(smollm2):
    out = llmpress("prune", "builtin:smollm2-135m", "--method", "structured", "--heads", "25%", "--mlp", "25%",
                   "--calibration-samples", "16", "--json")
    # 1 of 3 query heads per kv group (GQA) and 384 of 1536 MLP neurons in all 30 layers
    assert out["heads_per_layer"] == [9, 6] and out["mlp_neurons_per_layer"] == [1536, 1152]
    assert out["params_before"] == 134_515_008 and out["params_after"] == 107_972_928
    assert out["bytes_on_disk"] < 0.81 * out["bytes_parent"]
    evals = {}
    for model in ("builtin:smollm2-135m", out["id"]):
        evals[model] = llmpress("eval", model, "--max-tokens", "1024", "--no-speed", "--json")
    parent, child = evals["builtin:smollm2-135m"], evals[out["id"]]
    assert child["size"]["params"] == out["params_after"] < parent["size"]["params"]
    # the least-squares refit keeps the cut usable before any recovery (the cut alone is ~5x the parent)
    assert child["quality"]["perplexity"] < 2.0 * parent["quality"]["perplexity"]
