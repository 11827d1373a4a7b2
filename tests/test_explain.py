"""`explain` on tiny-llama (and an int8 artifact of it): attention maps, rollout, IG completeness,
PNG + HTML output, bad layer/head and prompt."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def eager(tiny):
    from llmpress.explain.model import load_eager

    model, tok, _ = load_eager(tiny)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    return model, tok, ids


def test_attention_maps_and_rollout_are_distributions(eager):
    import torch

    from llmpress.explain.attention import attention_maps, attention_rollout

    model, _, ids = eager
    maps = attention_maps(model, ids)
    t = ids.shape[1]
    assert maps.shape == (model.config.num_hidden_layers, model.config.num_attention_heads, t, t)
    assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-4)
    assert float(maps.triu(1).abs().max()) == 0.0  # causal: nothing attends to the future
    roll = attention_rollout(maps)
    assert torch.allclose(roll.sum(-1), torch.ones(t), atol=1e-4) and float(roll.triu(1).abs().max()) < 1e-7


def test_integrated_gradients_completeness(eager):
    """IG attributions add up to log p(target | input) - log p(target | reference-token baseline)."""
    import torch

    from llmpress.explain.attribution import gradient_x_input, integrated_gradients, reference_token

    model, tok, ids = eager
    with torch.no_grad():
        target = int(model(input_ids=ids).logits[0, -1].argmax())
    ref = reference_token(model, tok, ids)
    ig = integrated_gradients(model, ids, target, ref, keep_first=False, steps=64)
    assert len(ig["scores"]) == ids.shape[1]
    assert abs(ig["error"]) <= 0.02 * abs(ig["delta"]) + 1e-3, ig
    gxi = gradient_x_input(model, ids, target)
    assert len(gxi) == ids.shape[1] and any(abs(v) > 0 for v in gxi)


def test_explain_cli_writes_png_and_html(tiny, tmp_path):
    from llmpress.cli.main import _register_all, app

    _register_all()
    out = tmp_path / "ex"
    res = CliRunner().invoke(app, ["explain", "builtin:tiny-llama", "--prompt", "Hello world, this is",
                                   "--layer", "1", "--head", "2", "--ig-steps", "8", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["layers"] == [1] and data["heads"] == [2]
    for f in ("attention.png", "rollout.png", "attribution.png", "explain.html", "explain.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 500
    assert (out / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "explain.html").read_text()
    assert "data:image/png;base64," in page and " world" in page and data["next_token"] in page
    assert len(data["integrated_gradients"]) == len(data["tokens"]) == len(data["rollout_last_row"])
    for args, needle in [(["--layer", "7"], "--layer 7 does not exist"), (["--head", "-1"], "--head -1"),
                         (["--prompt", " "], "--prompt is empty")]:
        argv = ["explain", "builtin:tiny-llama", "--prompt", "Hi there", "--out", str(tmp_path / "bad"), *args]
        res = CliRunner().invoke(app, argv)
        assert res.exit_code != 0 and needle in res.output, res.output
        assert not (tmp_path / "bad").exists()  # nothing half-written


def test_explain_quantized_artifact_through_reference_path(tiny, tmp_path):
    """An int8 artifact is explained on its dequantized weights, which match its own outputs."""
    import torch

    from llmpress.compress.quantize import make_config, quantize
    from llmpress.explain import ExplainConfig, explain
    from llmpress.explain.model import load_eager

    art = quantize(tiny, make_config("int8-weight-only"))
    model, tok, notes = load_eager(art)
    assert notes["dequantized_modules"] > 0
    ids = tok("Quantized models can be explained", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = art.load_model()(input_ids=ids).logits.float()
        got = model(input_ids=ids).logits
    assert torch.allclose(ref, got, atol=2e-2, rtol=1e-2)
    res = explain(ExplainConfig(art.id, "Quantized models can be explained", ig_steps=8, out_dir=tmp_path / "q"))
    assert res.files["html"].is_file() and res.notes["loader"] == "quantized"


@pytest.mark.slow
def test_explain_smollm2(smollm2, tmp_path):
    from llmpress.explain import ExplainConfig, explain

    res = explain(ExplainConfig("builtin:smollm2-135m", "The capital of France is", layer=3, ig_steps=16,
                                out_dir=tmp_path / "s"))
    assert res.next_token.strip() == "Paris" and res.files["html"].is_file()
    assert res.ig_delta > 0  # the prompt raises log p(Paris) over the reference-token baseline
    assert abs(sum(res.integrated_gradients) - res.ig_delta - res.ig_completeness_error) < 1e-3
