"""The decode fast path (engine/fastpath.py, kernels.cpp Decoder) equals the reference path on tiny-llama.

Each case generates greedily through two engines over the same model, one with the fused C++ decoder and
one forced onto the reference path, and compares every decode step's logits and the tokens. Tolerances:
float32-activation paths (fp32, int8, int4) agree to 1e-4 of the logits' scale (summation order only);
bf16 to 3e-2 (the fused path keeps hidden states in float32 between layers where the reference rounds
them to bf16).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from llmpress.engine import LLM, EngineConfig, LLMEngine, SamplingParams, fastpath

PROMPTS = [[1, 5, 9, 13, 200, 7, 42], [3, 4], list(range(100, 140)), [11] * 17, [2, 99, 250, 7, 7, 7, 8, 1000]]


@pytest.fixture(scope="module")
def base(tiny):
    return tiny.load_model(dtype=torch.float32).eval(), tiny.load_tokenizer()


def _generate(model, tok, fast: bool, n: int = 12, **cfg) -> tuple[list[list[int]], list[torch.Tensor], LLMEngine]:
    """Greedy outputs and the logits of every decode-only step."""
    eng = LLMEngine(model, tok, EngineConfig(enable_prefix_caching=False, **cfg))
    if not fast:
        eng.runner.fast_path = None
    assert (eng.runner.fast_path is not None) == fast
    logits: list[torch.Tensor] = []
    orig = eng.runner.run

    def run(items, num_decode, *a, **k):
        out = orig(items, num_decode, *a, **k)
        if num_decode == len(items):
            logits.append(out[0].clone())
        return out

    eng.runner.run = run
    llm = LLM.__new__(LLM)
    llm.engine, llm.tokenizer = eng, tok
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    return [o.token_ids for o in outs], logits, eng


def _compare(model, tok, rtol: float, **cfg) -> None:
    toks_f, lg_f, eng = _generate(model, tok, True, **cfg)
    toks_r, lg_r, _ = _generate(model, tok, False, **cfg)
    assert toks_f == toks_r
    assert len(lg_f) == len(lg_r) >= 5
    for a, b in zip(lg_f, lg_r, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= rtol * b.abs().max().item()


def _prune_uneven(model):
    """Layer 0 keeps 2 of 4 query heads and 1 of 2 KV heads and half its MLP; layer 1 is untouched."""
    m = copy.deepcopy(model)
    a = m.model.layers[0].self_attn
    hd = m.config.hidden_size // m.config.num_attention_heads
    for name, keep in (("q_proj", 2 * hd), ("k_proj", hd), ("v_proj", hd)):
        old = getattr(a, name)
        new = torch.nn.Linear(old.in_features, keep, bias=False)
        new.weight.data = old.weight.data[:keep].clone()
        setattr(a, name, new)
    o = torch.nn.Linear(2 * hd, a.o_proj.out_features, bias=False)
    o.weight.data = a.o_proj.weight.data[:, :2 * hd].clone()
    a.o_proj = o
    mlp = m.model.layers[0].mlp
    inter = mlp.gate_proj.out_features // 2
    for name in ("gate_proj", "up_proj"):
        old = getattr(mlp, name)
        new = torch.nn.Linear(old.in_features, inter, bias=False)
        new.weight.data = old.weight.data[:inter].clone()
        setattr(mlp, name, new)
    d = torch.nn.Linear(inter, mlp.down_proj.out_features, bias=False)
    d.weight.data = mlp.down_proj.weight.data[:, :inter].clone()
    mlp.down_proj = d
    return m


def test_fp32_fast_equals_reference(base):
    _compare(*base, rtol=1e-4)


def test_fp32_fast_equals_reference_with_mixed_steps_and_small_blocks(base):
    # chunked prefill beside decodes (those steps run the reference path) and many 4-slot blocks
    _compare(*base, rtol=1e-4, max_tokens_per_step=9, block_size=4)


@pytest.mark.parametrize("scheme,opts", [("int8-weight-only", {}), ("int4-weight-only", {"group_size": 32}),
                                         ("int4-weight-only", {"group_size": 64})])
def test_quantized_fast_equals_reference(tiny, scheme, opts):
    from llmpress.compress.quantize import build_quantized, make_config

    q = build_quantized(tiny, make_config(scheme, **opts))
    _compare(q.model, q.tokenizer, rtol=1e-4)


def test_pruned_uneven_heads(base):
    model, tok = base
    pruned = _prune_uneven(model)
    eng = LLMEngine(pruned, tok, EngineConfig())
    assert eng.runner.n_heads[0] != eng.runner.n_heads[1] and eng.runner.fast_path is not None
    _compare(pruned, tok, rtol=1e-4)


def test_bf16_fast_equals_reference(base):
    model, tok = base
    _compare(copy.deepcopy(model).to(torch.bfloat16), tok, rtol=3e-2)


def test_forced_fallback_logs_one_line_and_generates(base, monkeypatch, caplog):
    model, tok = base
    monkeypatch.setenv(fastpath.ENV, "0")
    with caplog.at_level(logging.INFO, logger="llmpress.engine"):
        eng = LLMEngine(model, tok, EngineConfig())
    assert eng.runner.fast_path is None
    lines = [r.getMessage() for r in caplog.records if "fast path" in r.getMessage()]
    assert len(lines) == 1 and fastpath.ENV in lines[0]
    monkeypatch.delenv(fastpath.ENV)
    toks_off = [o.token_ids for o in LLM.from_model(model, tok).generate(
        PROMPTS, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))]
    monkeypatch.setenv(fastpath.ENV, "0")
    llm = LLM.from_model(model, tok)
    assert llm.engine.runner.fast_path is None
    assert [o.token_ids for o in llm.generate(PROMPTS, SamplingParams(max_tokens=8, temperature=0,
                                                                        ignore_eos=True))] == toks_off


def test_unknown_layer_type_falls_back_with_reason(tiny, caplog):
    from llmpress.compress.quantize import build_quantized, make_config

    q = build_quantized(tiny, make_config("int8-dynamic"))
    with caplog.at_level(logging.INFO, logger="llmpress.engine"):
        eng = LLMEngine(q.model, q.tokenizer, EngineConfig())
    assert eng.runner.fast_path is None
    lines = [r.getMessage() for r in caplog.records if "fast path" in r.getMessage()]
    assert len(lines) == 1 and "Int8DynamicLinear" in lines[0]
    outs = LLM.from_model(q.model, q.tokenizer).generate(PROMPTS[:2], SamplingParams(max_tokens=4, temperature=0,
                                                                                     ignore_eos=True))
    assert [len(o.token_ids) for o in outs] == [4, 4]


def test_merged_lora_is_served_fast(base):
    """A merged LoRA is plain Linear weights again: the fast path serves it and equals the reference."""
    peft = pytest.importorskip("peft")
    model, tok = base
    m = copy.deepcopy(model)
    lora = peft.get_peft_model(m, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    merged = lora.merge_and_unload().eval()
    _compare(merged, tok, rtol=1e-4)


# -- the batched sampler ---------------------------------------------------------------------------------
def _filter_one(x: torch.Tensor, t: float, k: int, p: float, mp: float) -> torch.Tensor:
    """The per-row reference: temperature, then top-k, min-p and top-p applied one after another."""
    x = x / t
    if 0 < k < x.numel():
        x = x.masked_fill(x < torch.topk(x, k).values[-1], float("-inf"))
    if mp > 0:
        pr = torch.softmax(x, -1)
        x = x.masked_fill(pr < mp * pr.max(), float("-inf"))
    if p < 1.0:
        sx, order = torch.sort(x, descending=True)
        sp = torch.softmax(sx, -1)
        x = x.scatter(0, order, sx.masked_fill(sp.cumsum(-1) - sp >= p, float("-inf")))
    return x


def test_batched_filter_equals_per_row_filters():
    from llmpress.engine.sampler import filter_logits

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 300, generator=g) * 3
    knobs = [(1.0, 0, 1.0, 0.0), (0.7, 5, 1.0, 0.0), (1.3, 0, 0.9, 0.0), (1.0, 0, 1.0, 0.2), (0.5, 40, 0.8, 0.05),
             (2.0, 1, 0.5, 0.5)]
    out = filter_logits(logits, *(torch.tensor([kn[j] for kn in knobs]) for j in range(4)))
    for i, (t, k, p, mp) in enumerate(knobs):
        ref = _filter_one(logits[i], t, k, p, mp)
        assert torch.equal(torch.isinf(out[i]), torch.isinf(ref)), i
        kept = ~torch.isinf(ref)
        assert torch.allclose(out[i][kept], ref[kept])


def test_batched_penalties_and_seeded_rows_are_independent_of_neighbours(base):
    from llmpress.engine.sampler import apply_penalties, sample
    from llmpress.engine.sequence import SamplingParams, Sequence

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    mk = [Sequence([1, 2, 3, 3], SamplingParams(repetition_penalty=2.0)),
          Sequence([4, 5], SamplingParams(frequency_penalty=1.0, presence_penalty=0.5)),
          Sequence([6], SamplingParams())]
    mk[1].token_ids += [7, 7, 8]  # output tokens
    out = apply_penalties(logits.clone(), mk)
    exp = logits.clone()
    for t in (1, 2, 3):
        exp[0, t] = exp[0, t] / 2.0 if exp[0, t] > 0 else exp[0, t] * 2.0
    exp[1, 7] -= 2 * 1.0 + 0.5
    exp[1, 8] -= 1.0 + 0.5
    assert torch.allclose(out, exp)
    # a seeded row draws the same tokens alone and beside other sampled rows
    seeded = SamplingParams(temperature=1.0, seed=11, top_p=0.9)
    alone = Sequence([1], seeded)
    together = Sequence([1], seeded)
    other = Sequence([1], SamplingParams(temperature=0.7, top_k=3, seed=5))
    x = torch.randn(2, 50, generator=torch.Generator().manual_seed(2))
    a = [sample(x[:1].clone(), [alone])[0] for _ in range(5)]
    b = [sample(x.clone(), [together, other])[0] for _ in range(5)]
    assert a == b


# -- int8 activations on VNNI ---------------------------------------------------------------------------
def test_vnni_int8_path_computes_the_q8_function():
    """With VNNI, the fused decoder's int8 x int8 from 8 rows: activations per row and 32-block to int8
    (absmax / 127); the result equals that function computed in float64 here, and stays near the
    float32-activation result (what the modules compute)."""
    from llmpress.compress.quantize import kernels
    from llmpress.compress.quantize.layers import int8_per_channel

    kern = kernels.get()
    vnni = kernels.set_q8_min_rows(8) if kern is not None else 0
    kernels.set_q8_min_rows(kernels.q8_min_rows())  # the decoder's setting stays as configured
    if vnni == 0:
        pytest.skip("no compiled kernels with AVX512-VNNI on this CPU")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 576, generator=g)
    q, s = int8_per_channel(w)
    x = torch.randn(12, 576, generator=g)
    x[:, 7] *= 40  # an outlier channel, as real activations have
    y8 = kern.int8_linear(x, q, s, 8)
    yf = kern.int8_linear(x, q, s)  # the modules' call: exact float32 at any row count
    xb = x.double().view(12, -1, 32)
    xs = xb.abs().amax(-1, keepdim=True) / 127
    xq = torch.round(xb / xs).view(12, 576) * xs.repeat_interleave(32, -1).view(12, 576)
    ref = xq @ (q.double() * s.double()[:, None]).T
    assert torch.allclose(y8.double(), ref, rtol=1e-4, atol=1e-3 * ref.abs().max().item())
    assert not torch.allclose(y8, yf)  # really a different path
    assert (y8 - yf).abs().max() <= 0.02 * yf.abs().max()
    assert torch.allclose(kern.int8_linear(x[:4], q, s, 8), yf[:4], rtol=1e-5, atol=1e-4)  # below 8 rows: float32


def test_bf16_activation_kernel_is_exact_weights_times_rounded_activations():
    """The AVX512-BF16 path computes the int8 weights (exact in bf16) times the activations rounded to bf16,
    summed in float32; below its row threshold and in the modules' own call it is the float32 kernel."""
    from llmpress.compress.quantize import kernels
    from llmpress.compress.quantize.layers import int8_per_channel

    kern = kernels.get()
    on = kernels.set_bf16a_min_rows(8) if kern is not None else 0
    kernels.set_bf16a_min_rows(kernels.bf16a_min_rows())  # the decoder's setting stays as configured
    if on == 0:
        pytest.skip("no compiled kernels with AVX512-BF16 on this CPU")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(97, 576, generator=g)  # a weight-row count with a tail
    q, s = int8_per_channel(w)
    x = torch.randn(13, 576, generator=g)
    x[:, 7] *= 40
    yb = kern.int8_linear(x, q, s, 0, 8)
    yf = kern.int8_linear(x, q, s)
    ref = x.bfloat16().double() @ (q.double() * s.double()[:, None]).T
    assert torch.allclose(yb.double(), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    assert not torch.allclose(yb, yf)  # really a different path
    assert (yb - yf).abs().max() <= 0.01 * yf.abs().max()
    assert torch.allclose(kern.int8_linear(x[:7], q, s, 0, 8), yf[:7], rtol=1e-5, atol=1e-4)  # below 8 rows


def test_decode_steps_of_eight_rows_use_bf16_activations_where_built(tiny):
    """With 8+ decode rows the fused decoder (and the decode step's head) take the bf16-activation path:
    its logits differ from the float32 path's (threshold 0) by no more than bf16 rounding of the activations."""
    from llmpress.compress.quantize import build_quantized, kernels, make_config

    if kernels.get() is None or kernels.set_bf16a_min_rows(kernels.bf16a_min_rows()) == 0:
        pytest.skip("no compiled kernels with AVX512-BF16 on this CPU")
    q = build_quantized(tiny, make_config("int8-weight-only"))
    prompts = [[1 + i, 5, 9, 13 + i, 200] for i in range(10)]
    sp = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    outs = {}
    for rows in (8, 0):
        kernels.set_bf16a_min_rows(rows)
        try:
            eng = LLMEngine(q.model, q.tokenizer, EngineConfig(enable_prefix_caching=False))
            logits: list[torch.Tensor] = []
            orig = eng.runner.run

            def run(items, num_decode, *a, _orig=orig, _l=logits, **k):
                out = _orig(items, num_decode, *a, **k)
                if num_decode == len(items) == 10:
                    _l.append(out[0].clone())
                return out

            eng.runner.run = run
            llm = LLM.__new__(LLM)
            llm.engine, llm.tokenizer = eng, q.tokenizer
            outs[rows] = ([o.token_ids for o in llm.generate(prompts, sp)], logits)
        finally:
            kernels.set_bf16a_min_rows(kernels.bf16a_min_rows())
    (_, lb), (_, lf) = outs[8], outs[0]
    assert len(lb) == len(lf) >= 5
    diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(lb, lf, strict=True))
    assert 0 < diff < 2e-2  # a different path, within bf16 rounding of the activations
