"""The engine on SmolLM2-135M: greedy output equals HF generate() token for token, also with int8 weights."""

from __future__ import annotations

import pytest
import torch

from llmpress.engine import LLM, SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,",
           "The three primary colors are", "import numpy as np\nimport"]


def test_smollm2_greedy_equals_hf(smollm2):
    llm = LLM(smollm2, kv_cache_mb=64, max_tokens_per_step=16)  # chunked prefill on the longer prompts
    tok = llm.tokenizer
    model = smollm2.load_model()  # transformers' model and generate: the engine serves engine/lite.py's
    prompts = [tok.encode(p) for p in PROMPTS]
    outs = llm.generate(prompts, SamplingParams(max_tokens=24, temperature=0))
    for ids, o in zip(prompts, outs, strict=True):
        ref = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
        assert o.token_ids == ref, tok.decode(ids)
    again = llm.generate(prompts[:1], SamplingParams(max_tokens=24, temperature=0))[0]
    assert again.token_ids == outs[0].token_ids


def test_smollm2_int8_weight_only_served(smollm2):
    quant = pytest.importorskip("llmpress.compress.quantize")
    from llmpress.engine import EngineConfig, LLMEngine

    q = quant.build_quantized(smollm2, quant.make_config("int8-weight-only"))
    eng = LLMEngine(q.model, q.tokenizer, EngineConfig(kv_cache_mb=32))
    ids = q.tokenizer.encode(PROMPTS[0])
    seq = eng.add_request(ids, SamplingParams(max_tokens=12, temperature=0))
    while eng.has_work():
        eng.step()
    ref = q.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    assert seq.output_ids == ref
