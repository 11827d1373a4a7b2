"""SmolLM2-135M: `llmpress tune lora` makes an adapter whose eval agrees with its merged artifact."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_cli_lora_on_smollm2_eval_agrees_with_merged(smollm2):
    from typer.testing import CliRunner

    from llmpress.cli.main import _register_all, app
    from llmpress.evaluate import EvalConfig, evaluate_artifact
    from llmpress.sources import resolve

    _register_all()
    r = CliRunner().invoke(app, ["tune", "lora", "builtin:smollm2-135m", "--data", "builtin:pydoc-instruct",
                                 "--max-steps", "3", "--seq-len", "96", "--lr", "1e-3", "--json"])
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout[r.stdout.index("{"):])
    m = made["metrics"]["tune"]
    assert made["format"] == "adapter" and made["parent"] == smollm2.id
    assert m["trainable_pct"] <= 2.0 and m["eval_loss_after"] < m["eval_loss_before"]
    r = CliRunner().invoke(app, ["tune", "merge", made["id"], "--json"])
    assert r.exit_code == 0, r.output
    merged = resolve(json.loads(r.stdout[r.stdout.index("{"):])["id"])
    cfg = EvalConfig(max_tokens=384, window=128, stride=128, speed=False, size=False)
    q_adapter = evaluate_artifact(resolve(made["id"]), cfg)["quality"]["perplexity"]
    q_merged = evaluate_artifact(merged, cfg)["quality"]["perplexity"]
    q_base = evaluate_artifact(smollm2, cfg)["quality"]["perplexity"]
    assert q_adapter == pytest.approx(q_merged, rel=1e-3)
    assert q_adapter != pytest.approx(q_base, rel=1e-5)  # the adapter is really applied
