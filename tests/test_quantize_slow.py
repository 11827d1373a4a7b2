"""Real-model quantization checks on SmolLM2-135M (slow: run by `make test`)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

EVAL_TOKENS = 2048


@pytest.fixture(scope="module")
def setup(smollm2):
    from llmpress.data import load_corpus
    from llmpress.evaluate.quality import perplexity

    tok = smollm2.load_tokenizer()
    texts = load_corpus("builtin:pydoc").eval

    def ppl(model) -> float:
        return perplexity(model, tok, texts, 512, 256, EVAL_TOKENS)["perplexity"]

    return ppl, ppl(smollm2.load_model(dtype=torch.float32)), tok


def test_int8_weight_only_quality_and_round_trip(smollm2, setup):
    from llmpress.artifact import Artifact
    from llmpress.compress.quantize import build_quantized, make_config, save_quantized_artifact

    ppl, base, tok = setup
    built = build_quantized(smollm2, make_config("int8-weight-only"))
    delta = (ppl(built.model) / base - 1) * 100
    assert delta <= 0.5, f"int8-weight-only Δppl {delta:+.2f} %"
    art = save_quantized_artifact(built)
    assert art.bytes_on_disk() < 0.3 * smollm2.bytes_on_disk()
    ids = torch.tensor([tok("The quick brown fox", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(Artifact.open(art.path).load_model()(input_ids=ids).logits, built.model(input_ids=ids).logits)


def test_int4_gptq_beats_round_to_nearest(smollm2, setup):
    from llmpress.compress.quantize import build_quantized, make_config

    ppl, base, _ = setup
    rtn = ppl(build_quantized(smollm2, make_config("int4-weight-only", group_size=64)).model)
    gptq = ppl(build_quantized(smollm2, make_config("int4-weight-only", group_size=64, calibration="builtin:pydoc",
                                                    samples=16)).model)
    assert gptq < rtn, f"GPTQ {gptq:.3f} vs RTN {rtn:.3f} (base {base:.3f})"


def test_group_128_does_not_divide_smollm2(smollm2):
    from llmpress.compress.quantize import make_config, quantize
    from llmpress.errors import ConfigError

    with pytest.raises(ConfigError, match="does not divide the input width 576"):
        quantize(smollm2, make_config("int4-weight-only", group_size=128))
