"""The engine's transformers-free model (engine/lite.py) equals transformers' on every artifact kind it serves.

Each case builds one artifact both ways (`lite.build` and `artifact.load_model()`) and compares full-forward
logits (float32 paths: same ops in the same order, so 1e-5 of the logits' scale) and the engine's greedy
tokens; the fallback cases check the one log line and that transformers' model is what gets served.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from llmpress.artifact import Step, create_artifact
from llmpress.engine import LLM, LLMEngine, SamplingParams, lite
from llmpress.sources.hf import save_model

PROMPTS = [[1, 5, 9, 13, 200, 7, 42], list(range(100, 140)), [2, 99, 250, 7, 7, 7, 8, 1000]]


def _ids(n: int = 24) -> torch.Tensor:
    return torch.randint(3, 1000, (2, n), generator=torch.Generator().manual_seed(0))


def _greedy(model, tok) -> list[list[int]]:
    sp = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    return [o.token_ids for o in LLM.from_model(model, tok).generate(PROMPTS, sp)]


def _same(art, rtol: float = 1e-5) -> lite.LiteCausalLM:
    """Lite and transformers' builds of `art` agree on logits and on greedy engine tokens."""
    ref, ours = art.load_model().eval(), lite.build(art)
    assert type(ours) is lite.LiteCausalLM and type(ref) is not lite.LiteCausalLM
    with torch.inference_mode():
        a, b = ref(_ids()).logits.float(), ours(_ids()).logits.float()
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= rtol * a.abs().max().item()
    tok = art.load_tokenizer()
    assert _greedy(ours, tok) == _greedy(ref, tok)
    return ours


def _save(name: str, model, tok, parent=None):
    with create_artifact(name, Step("test", {}), parent=parent) as w:
        save_model(model, tok, w.path)
    return w.artifact


def test_float_artifact_equals_transformers(tiny):
    m = _same(tiny)
    assert m.lm_head.weight.data_ptr() != 0 and m.model.embed_tokens.weight.dtype == torch.float32


def test_padded_batch_equals_transformers_on_real_tokens(tiny):
    ref, ours = tiny.load_model().eval(), lite.build(tiny)
    ids = _ids(16)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0  # right padding
    with torch.inference_mode():
        a = ref(ids, attention_mask=mask).logits
        b = ours(ids, attention_mask=mask).logits
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1, :11], b[1, :11], atol=1e-5)


@pytest.mark.parametrize("scheme,opts", [("int8-weight-only", {}), ("int4-weight-only", {"group_size": 32}),
                                         ("int8-dynamic", {}), ("bf16", {})])
def test_quantized_and_half_artifacts_equal_transformers(tiny, scheme, opts):
    from llmpress.compress.quantize import make_config, quantize

    art = quantize(tiny, make_config(scheme, **opts))
    _same(art, rtol=1e-5 if scheme != "bf16" else 2e-2)


def test_bias_model_qwen2_equals_transformers(tiny):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # non-zero biases, so a dropped bias would show
            for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                p.bias.normal_(0, 0.5)
    art = _save("tiny-qwen2", model, tiny.load_tokenizer())
    ours = _same(art)
    assert ours.model.layers[0].self_attn.q_proj.bias is not None and ours.model.layers[0].self_attn.o_proj.bias is None


def test_llama3_rope_scaling_equals_transformers(tiny):
    model = tiny.load_model().eval()
    m = copy.deepcopy(model)
    m.config.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    art = _save("tiny-llama3-rope", m, tiny.load_tokenizer())
    ref = art.load_model()
    assert not torch.allclose(ref.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)  # scaling applies
    ours = _same(art)
    assert torch.allclose(ours.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq)


def test_uneven_pruned_layers_load_from_their_stored_shapes(tiny):
    """Layer 0 with 2 of 4 heads and half its MLP: transformers cannot rebuild it from config.json, the
    lite model shapes each layer from its tensors, and serves it as the in-memory model computes it."""
    from test_fastpath import _prune_uneven

    pruned = _prune_uneven(tiny.load_model().eval())
    art = _save("tiny-uneven", pruned, tiny.load_tokenizer())
    ours = lite.build(art)
    assert ours.model.layers[0].self_attn.q_proj.out_features != ours.model.layers[1].self_attn.q_proj.out_features
    with torch.inference_mode():
        assert torch.allclose(ours(_ids()).logits, pruned(_ids()).logits, atol=1e-5)
    tok = tiny.load_tokenizer()
    eng = LLMEngine.from_artifact(art)
    assert eng.runner.fast_path is not None and eng.runner.n_heads[0] != eng.runner.n_heads[1]
    assert _greedy(ours, tok) == _greedy(pruned, tok)


def test_forced_off_logs_one_line_and_serves_transformers_model(tiny, monkeypatch, caplog):
    monkeypatch.setenv(lite.ENV, "0")
    with caplog.at_level(logging.INFO, logger="llmpress.engine"):
        eng = LLMEngine.from_artifact(tiny)
    assert type(eng.runner.model) is not lite.LiteCausalLM
    lines = [r.getMessage() for r in caplog.records if "lite model" in r.getMessage()]
    assert len(lines) == 1 and lite.ENV in lines[0]


def test_unknown_rope_type_falls_back_with_the_reason(tiny, caplog, tmp_path):
    model = tiny.load_model().eval()
    m = copy.deepcopy(model)
    m.config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    art = _save("tiny-dynamic-rope", m, tiny.load_tokenizer())
    with caplog.at_level(logging.INFO, logger="llmpress.engine"):
        served = lite.load_for_engine(art)
    assert type(served) is not lite.LiteCausalLM
    lines = [r.getMessage() for r in caplog.records if "lite model" in r.getMessage()]
    assert len(lines) == 1 and "'dynamic'" in lines[0]


def test_config_describing_missing_tensors_is_a_clear_error(tiny):
    """A config.json that describes tensors the weights lack is refused with the names (transformers 5 would
    initialise them at random and serve that)."""
    from llmpress.errors import SourceError

    with create_artifact("tiny-broken", Step("test", {})) as w:
        save_model(tiny.load_model(), tiny.load_tokenizer(), w.path)
        cfg = json.loads((w.path / "config.json").read_text())
        cfg["num_hidden_layers"] += 1
        (w.path / "config.json").write_text(json.dumps(cfg))
    art = w.artifact
    with pytest.raises(SourceError, match=r"lack \(model\.layers\.2\."):
        LLMEngine.from_artifact(art)


def test_tokenizer_is_the_class_autotokenizer_builds(tiny):
    from transformers import AutoTokenizer

    ours, ref = tiny.load_tokenizer(), AutoTokenizer.from_pretrained(tiny.path)
    assert type(ours) is type(ref)
    text = "Hello , world . It 's <|im_start|>user\nhi<|im_end|> naïve — 42"
    assert ours.encode(text) == ref.encode(text)
    ids = ref.encode(text)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    msgs = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == \
        ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def test_serving_process_does_not_import_transformers_modeling(tiny):
    """What the memory target rests on: an engine on an artifact builds without transformers' modeling code,
    dynamo / sympy, accelerate or scipy in the process (each costs tens of MB of RSS)."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from llmpress.artifact import Artifact
        from llmpress.engine import LLM, SamplingParams
        llm = LLM(Artifact.open(Path({str(tiny.path)!r})))
        out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
        assert len(out[0].token_ids) == 3
        heavy = ("transformers.models", "transformers.modeling_utils", "torch._dynamo", "sympy", "accelerate",
                 "scipy")
        print(sorted(m for m in sys.modules if m.startswith(heavy))[:5])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_quantized_lite_model_holds_no_float_weight_and_ties_the_head(tiny):
    from llmpress.compress.quantize import make_config, quantize
    from llmpress.compress.quantize.layers import Int8Embedding, Int8WeightOnlyLinear, QuantModule

    m = lite.build(quantize(tiny, make_config("int8-weight-only")))
    emb, head = m.model.embed_tokens, m.lm_head
    assert isinstance(emb, Int8Embedding) and isinstance(head, Int8WeightOnlyLinear)
    assert emb.qweight.untyped_storage().data_ptr() == head.qweight.untyped_storage().data_ptr()  # stored once
    quant = [x for x in m.modules() if isinstance(x, QuantModule)]
    smallest = min(x.qweight.numel() for x in quant)
    tensors = [*m.parameters(), *m.buffers()]
    assert not any(t.is_floating_point() and t.dim() >= 2 and t.numel() >= smallest for t in tensors)
    assert not any(t.is_meta for t in tensors)


def test_float_lite_weights_stay_mapped_and_fused_originals_leave_rss(tiny):
    from llmpress.engine.memory import _file_mapping

    m = lite.build(tiny)
    w = m.model.layers[1].mlp.down_proj.weight  # not fused by the engine: stays a view of the mapped file
    assert _file_mapping(w.data_ptr(), w.data_ptr() + w.nbytes)
    eng = LLMEngine(m, tiny.load_tokenizer())
    assert eng.runner.released_mb > 0  # q/k/v and gate/up were copied into fused tensors: their pages dropped
    assert _greedy(m, tiny.load_tokenizer()) == _greedy(tiny.load_model().eval(), tiny.load_tokenizer())


# -- the tokenizer (engine/tokenizer.py) ------------------------------------------------------------------------
TEXTS = ["Hello , world . It 's <|im_start|>user\nhi<|im_end|> naïve — 42", "  leading and   inner  spaces\t\ttabs\n\n",
         "日本語のテキストと emoji 🙂🚀", "<|endoftext|><|im_end|>", "def f(x):\n    return x ** 2  # ok", ""]
TEMPLATE = """{%- set ns = namespace(sys=none) -%}
{%- for m in messages -%}
{%- if m['role'] == 'system' %}{% set ns.sys = m['content'] %}{% continue %}{% endif -%}
{%- if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}
<|im_start|>{{ m['role'] }}
{{ m['content'] | trim }}{{ eos_token }}
{% if loop.last and ns.sys %}[sys: {{ ns.sys | tojson }}]{% endif %}
{%- endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}
{{ bos_token }}{{ pad_token }}{{ tools | tojson }}"""
CHATS = [[{"role": "user", "content": "hi"}],
         [{"role": "system", "content": "Be \"brief\" <ok>"}, {"role": "user", "content": "  2+2?  "},
          {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3? é"}]]


def _tok_pair(path):
    from llmpress.engine.tokenizer import LiteTokenizer
    from llmpress.sources.hf import load_tokenizer

    return LiteTokenizer(path), load_tokenizer(path)


def test_lite_tokenizer_equals_transformers(tiny, tmp_path):
    shutil.copytree(tiny.path, tmp_path / "t")
    (tmp_path / "t" / "chat_template.jinja").write_text(TEMPLATE)
    for path in (tiny.path, tmp_path / "t"):
        ours, ref = _tok_pair(path)
        for t in TEXTS:
            for special in (True, False):
                assert ours.encode(t, add_special_tokens=special) == ref.encode(t, add_special_tokens=special), t
            ids = ref.encode(t)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
        assert (ours.eos_token_id, ours.bos_token_id, ours.pad_token_id) == (ref.eos_token_id, ref.bos_token_id,
                                                                            ref.pad_token_id)
        assert ours.convert_ids_to_tokens(ref.encode(TEXTS[0])) == ref.convert_ids_to_tokens(ref.encode(TEXTS[0]))
        for chat in CHATS:
            for gen in (True, False):
                a = ours.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
                b = ref.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
                assert a == b
                assert ours.apply_chat_template(chat, add_generation_prompt=gen) == \
                    ref.apply_chat_template(chat, add_generation_prompt=gen, return_dict=False)
    with pytest.raises(Exception, match="bad role"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_lite_tokenizer_is_shared_and_transformers_one_is_copied(tiny, monkeypatch):
    from llmpress.engine.tokenizer import LiteTokenizer

    eng = LLMEngine.from_artifact(tiny)
    assert type(eng.tokenizer) is LiteTokenizer and eng._detok_tokenizer is eng.tokenizer
    monkeypatch.setenv(lite.ENV, "0")
    eng = LLMEngine.from_artifact(tiny)
    assert type(eng.tokenizer) is not LiteTokenizer and eng._detok_tokenizer is not eng.tokenizer


def test_tokenizer_config_options_it_does_not_implement_fall_back(tiny, tmp_path, caplog):
    from llmpress.engine import tokenizer

    with create_artifact("tiny-bos", Step("test", {})) as w:
        for f in tiny.path.iterdir():
            if f.name != "llmpress.json":
                shutil.copy(f, w.path / f.name)
        tc = json.loads((w.path / "tokenizer_config.json").read_text())
        tc["add_bos_token"] = True
        (w.path / "tokenizer_config.json").write_text(json.dumps(tc))
    with caplog.at_level(logging.INFO, logger="llmpress.engine"):
        tok = tokenizer.load_for_engine(w.artifact)
    assert type(tok) is not tokenizer.LiteTokenizer
    lines = [r.getMessage() for r in caplog.records if "lite tokenizer" in r.getMessage()]
    assert len(lines) == 1 and "add_bos_token" in lines[0]
