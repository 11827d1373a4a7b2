"""The engine on tiny-llama: greedy equals HF, chunked prefill, prefix cache, memory limits, sampling, errors."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch

from llmpress.engine import LLM, EngineConfig, LLMEngine, SamplingParams
from llmpress.errors import ConfigError, DataError, OverloadedError, SourceError

PROMPTS = ["Hello, my name is", "The quick brown fox jumps over the lazy dog and then runs into the forest where",
           "def fibonacci(n):", "Paris", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20"]


@pytest.fixture(scope="module")
def model_tok(tiny):
    return tiny.load_model(), tiny.load_tokenizer()


# Memo per model object, not per id(model): an id is reused once a model is freed, and a later
# model at the same address would be compared against another model's references.
_HF: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[tuple[int, ...], int], list[int]]] = (
    weakref.WeakKeyDictionary())


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """HF generate() greedy continuation (memoised: several tests compare against the same references)."""
    memo = _HF.setdefault(model, {})
    k = (tuple(ids), n)
    if k not in memo:
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
        memo[k] = out[0, len(ids):].tolist()
    return memo[k]


def penalized_greedy(model, ids: list[int], n: int, frequency: float, presence: float) -> list[int]:
    """Greedy decoding with OpenAI's penalties written out: logit -= frequency * count + presence * (count > 0),
    counting the generated tokens only."""
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids + out])).logits[0, -1].float()
            for t in set(out):
                logits[t] -= frequency * out.count(t) + presence
            out.append(int(logits.argmax()))
    return out


def run(model, tok, prompts, params, **cfg):
    eng = LLMEngine(model, tok, EngineConfig(**cfg))
    llm = LLM.__new__(LLM)
    llm.engine, llm.tokenizer = eng, tok
    return llm, llm.generate(prompts, params)


@pytest.mark.parametrize("cfg", [
    dict(),  # one step prefills everything
    dict(max_tokens_per_step=7, block_size=4),  # chunked prefill across many steps and blocks
    dict(max_batch=2),  # requests join as others leave
])
def test_greedy_equals_hf(model_tok, cfg):
    model, tok = model_tok
    prompts = [tok.encode(p) for p in PROMPTS]
    _, outs = run(model, tok, prompts, SamplingParams(max_tokens=20, temperature=0), **cfg)
    for ids, o in zip(prompts, outs, strict=True):
        assert o.token_ids == hf_greedy(model, ids, 20)
        assert o.ttft is not None and o.ttft >= 0


def test_offline_api_from_artifact(tiny):
    llm = LLM(tiny, kv_cache_mb=8)
    outs = llm.generate([[1, 2, 3], "Hello"], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    assert [len(o.token_ids) for o in outs] == [5, 5]
    assert outs[1].prompt_token_ids == llm.tokenizer.encode("Hello")


def test_prefix_cache_reuses_blocks_and_keeps_output(model_tok):
    model, tok = model_tok
    ids = tok.encode("shared system prompt " * 12)
    llm, first = run(model, tok, [ids], SamplingParams(max_tokens=8, temperature=0), block_size=8)
    second = llm.generate([ids + [42]], SamplingParams(max_tokens=8, temperature=0))
    third = llm.generate([ids], SamplingParams(max_tokens=8, temperature=0))
    assert third[0].num_cached_tokens >= len(ids) - 8 and third[0].num_cached_tokens > 0
    assert second[0].num_cached_tokens > 0
    assert third[0].token_ids == first[0].token_ids
    assert second[0].token_ids == hf_greedy(model, ids + [42], 8)


def test_small_kv_budget_preempts_but_stays_correct(model_tok):
    model, tok = model_tok
    prompts = [tok.encode(p) for p in PROMPTS]
    eng_probe = LLMEngine(model, tok, EngineConfig(block_size=4, kv_cache_mb=1))
    per_block = eng_probe.runner.bytes_per_block
    # room for ~2 sequences at a time: forces waiting and preemption (recompute)
    llm, outs = run(model, tok, prompts, SamplingParams(max_tokens=20, temperature=0), block_size=4,
                    kv_cache_mb=26 * per_block / 2**20)
    for ids, o in zip(prompts, outs, strict=True):
        assert o.token_ids == hf_greedy(model, ids, 20)
    assert llm.engine.scheduler.preemptions > 0
    assert llm.engine.blocks.num_used == 0
    with pytest.raises(ConfigError, match="KV blocks"):
        llm.engine.make_sequence(list(range(1, 200)), SamplingParams(max_tokens=10))


def test_bad_requests_are_refused(model_tok):
    model, tok = model_tok
    eng = LLMEngine(model, tok, EngineConfig(max_waiting=2))
    with pytest.raises(DataError, match="empty"):
        eng.make_sequence([], SamplingParams())
    with pytest.raises(ConfigError, match="context") as e:
        eng.make_sequence([1, 2], SamplingParams(max_tokens=eng.max_model_len))
    assert e.value.param == "max_tokens"
    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0)
    eng.add_request([1, 2], SamplingParams(max_tokens=1))
    eng.add_request([1, 2], SamplingParams(max_tokens=1))
    with pytest.raises(OverloadedError):
        eng.add_request([1, 2], SamplingParams(max_tokens=1))
    with pytest.raises(ConfigError):
        EngineConfig(max_batch=0)


def test_error_in_one_request_does_not_stop_engine(model_tok):
    model, tok = model_tok
    eng = LLMEngine(model, tok, EngineConfig())
    good = eng.add_request([5, 6, 7], SamplingParams(max_tokens=3, temperature=0))
    bad = eng.make_sequence([5, 6, 7], SamplingParams(max_tokens=3))
    bad.token_ids[1] = 10**9  # corrupt after validation: the forward raises
    eng.add(bad)
    while eng.has_work():
        eng.step()
    assert bad.finish_reason == "error" and "Error" in (bad.error or "")
    again = eng.add_request([5, 6, 7], SamplingParams(max_tokens=3, temperature=0))
    while eng.has_work():
        eng.step()
    assert again.finish_reason == "length" and again.output_ids == hf_greedy(model, [5, 6, 7], 3)
    assert good.finish_reason in ("length", "error")
    assert eng.blocks.num_used == 0


def test_sampling_controls(model_tok):
    model, tok = model_tok
    ids = tok.encode("Sampling test")
    llm, outs = run(model, tok, [ids] * 3, [SamplingParams(max_tokens=12, temperature=1.0, seed=7, ignore_eos=True),
                                           SamplingParams(max_tokens=12, temperature=1.0, seed=7, ignore_eos=True),
                                           SamplingParams(max_tokens=12, temperature=1.0, seed=8, ignore_eos=True)])
    assert outs[0].token_ids == outs[1].token_ids != outs[2].token_ids
    greedy = llm.generate([ids], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0].token_ids
    topk1 = llm.generate([ids], SamplingParams(max_tokens=12, temperature=0.9, top_k=1, seed=1, ignore_eos=True))
    assert topk1[0].token_ids == greedy
    tiny_p = llm.generate([ids], SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-6, seed=3, ignore_eos=True))
    assert tiny_p[0].token_ids == greedy
    minp = llm.generate([ids], SamplingParams(max_tokens=12, temperature=1.0, min_p=1.0, seed=3, ignore_eos=True))
    assert minp[0].token_ids == greedy
    rep = llm.generate([ids], SamplingParams(max_tokens=12, temperature=0, repetition_penalty=5.0, ignore_eos=True))
    assert len(set(rep[0].token_ids)) == 12  # a strong penalty forbids repeats on this model
    assert len(set(greedy)) < 12  # greedy repeats itself here, so the penalties below have work to do
    # 0.2: tokens repeat until their count outweighs the margin, so counting matters, not just "seen"
    for frequency, presence in ((0.2, 0.0), (0.0, 2.0), (0.05, 0.3)):
        pen = llm.generate([ids], SamplingParams(max_tokens=12, temperature=0, frequency_penalty=frequency,
                                                 presence_penalty=presence, ignore_eos=True))[0].token_ids
        assert pen != greedy and pen == penalized_greedy(model, ids, 12, frequency, presence)
    # stop token id and stop string
    stop_id = greedy[3]
    st = llm.generate([ids], SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[stop_id]))[0]
    assert st.token_ids == greedy[:greedy.index(stop_id) + 1] and st.finish_reason == "stop"
    text = tok.decode(greedy, skip_special_tokens=True)
    needle = text[len(text) // 2:len(text) // 2 + 3]
    ss = llm.generate([ids], SamplingParams(max_tokens=12, temperature=0, stop=[needle], ignore_eos=True))[0]
    assert ss.finish_reason == "stop" and needle not in ss.text and text.startswith(ss.text)
    # logprobs: chosen token is the argmax for greedy; alternatives sorted
    lp = llm.generate([ids], SamplingParams(max_tokens=4, temperature=0, logprobs=3, ignore_eos=True))[0]
    for e in lp.logprobs:
        assert len(e["top"]) == 3 and max(e["top"].values()) == pytest.approx(e["logprob"])
    # n=0 tokens with prompt logprobs (scoring)
    sc = llm.generate([ids], SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
    assert sc.token_ids == [] and len(sc.prompt_logprobs) == len(ids) and sc.prompt_logprobs[0] is None


def test_timeout_and_abort_free_blocks(model_tok):
    model, tok = model_tok
    eng = LLMEngine(model, tok, EngineConfig())
    a = eng.add_request([1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True))
    b = eng.add_request([1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True, timeout=1e-4))
    eng.step()
    eng.abort(a)
    while eng.has_work():
        eng.step()
    assert a.finish_reason == "abort" and b.finish_reason == "timeout"
    assert eng.blocks.num_used == 0


def _prune_layer0(model):
    """Halve layer 0's heads (4 -> 2 query, 2 -> 1 kv) and its MLP, like a structured-pruning step would."""
    m = copy.deepcopy(model)
    a = m.model.layers[0].self_attn
    hd = 32
    for name, keep in (("q_proj", 2 * hd), ("k_proj", hd), ("v_proj", hd)):
        old = getattr(a, name)
        new = torch.nn.Linear(old.in_features, keep, bias=False)
        new.weight.data = old.weight.data[:keep].clone()
        setattr(a, name, new)
    o = torch.nn.Linear(2 * hd, a.o_proj.out_features, bias=False)
    o.weight.data = a.o_proj.weight.data[:, :2 * hd].clone()
    a.o_proj = o
    mlp = m.model.layers[0].mlp
    for name in ("gate_proj", "up_proj"):
        old = getattr(mlp, name)
        new = torch.nn.Linear(old.in_features, 64, bias=False)
        new.weight.data = old.weight.data[:64].clone()
        setattr(mlp, name, new)
    d = torch.nn.Linear(64, mlp.down_proj.out_features, bias=False)
    d.weight.data = mlp.down_proj.weight.data[:, :64].clone()
    mlp.down_proj = d
    return m


def test_pruned_and_half_precision_models(model_tok):
    model, tok = model_tok
    ids = tok.encode("Pruned models have fewer heads")
    pruned = _prune_layer0(model)
    _, outs = run(pruned, tok, [ids], SamplingParams(max_tokens=10, temperature=0))
    assert outs[0].token_ids == hf_greedy(pruned, ids, 10)
    eng = LLMEngine(pruned, tok, EngineConfig())
    assert eng.runner.n_heads == [2, 4] and eng.runner.n_kv == [1, 2]
    bf = copy.deepcopy(model).to(torch.bfloat16)
    _, outs = run(bf, tok, [ids], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    assert len(outs[0].token_ids) == 6
    assert LLMEngine(bf, tok, EngineConfig()).runner.k_cache[0].dtype == torch.bfloat16


def test_unsupported_architecture_is_a_clear_error(model_tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = model_tok
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64))
    with pytest.raises(SourceError, match="gpt2"):
        LLMEngine(gpt2, tok, EngineConfig())


def test_scheduler_mixes_decode_and_chunked_prefill(model_tok):
    model, tok = model_tok
    eng = LLMEngine(model, tok, EngineConfig(max_tokens_per_step=8, block_size=4))
    a = eng.add_request([1, 2, 3], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    eng.step()  # a prefilled, first token sampled
    b = eng.add_request(list(range(10, 40)), SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    a_before = a.num_output_tokens
    eng.step()  # a decodes while b gets its first chunk (7 tokens)
    assert a.num_output_tokens == a_before + 1
    assert b.num_computed == 7 and b.num_output_tokens == 0
    while eng.has_work():
        eng.step()
    assert b.output_ids == hf_greedy(model, list(range(10, 40)), 2)


def test_int8_weight_only_model_matches_its_hf_forward(tiny):
    quant = pytest.importorskip("llmpress.compress.quantize")
    q = quant.build_quantized(tiny, quant.make_config("int8-weight-only"))
    tok = q.tokenizer
    ids = tok.encode("Quantized models are served too")
    _, outs = run(q.model, tok, [ids, ids[:3]], SamplingParams(max_tokens=10, temperature=0))
    assert outs[0].token_ids == hf_greedy(q.model, ids, 10)
    assert outs[1].token_ids == hf_greedy(q.model, ids[:3], 10)
