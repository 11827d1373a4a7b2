"""The decode fast path equals the reference path on SmolLM2-135M (real weights): fp32, int8, int4 g32."""

from __future__ import annotations

import pytest
import torch
from test_fastpath import _compare  # same directory: pytest puts it on sys.path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol(smollm2):
    return smollm2.load_model(dtype=torch.float32).eval(), smollm2.load_tokenizer()


def test_smollm2_fp32_fast_equals_reference(smol):
    _compare(*smol, rtol=1e-4)


@pytest.mark.parametrize("scheme,opts", [("int8-weight-only", {}), ("int4-weight-only", {"group_size": 32})])
def test_smollm2_quantized_fast_equals_reference(smollm2, scheme, opts):
    from llmpress.compress.quantize import build_quantized, make_config

    q = build_quantized(smollm2, make_config(scheme, **opts))
    _compare(q.model, q.tokenizer, rtol=1e-4)
