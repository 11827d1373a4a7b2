"""Memory after load: quantized artifacts load straight into their int form (no float copy of any
quantized weight or of the embedding), weights are read without a second copy, the lazily mapped KV
cache is resident only where written, and the float pages a fused copy replaced leave RSS — all checked
structurally (tensor dtypes, sizes, storages, page residency), never against an RSS threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from llmpress.compress.quantize import make_config, quantize
from llmpress.compress.quantize.layers import Int8Embedding, Int8WeightOnlyLinear, QuantModule
from llmpress.engine import LLM, SamplingParams
from llmpress.engine.memory import release_file_pages, resident_bytes

PROMPTS = [[1, 17, 305, 1204, 77, 9, 4000], [1, 2048, 33, 7, 7, 7, 12, 901, 5]]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def quantized(tiny):
    """tiny-llama as an int8-weight-only and an int4 g32 artifact (saved, so loading reads them from disk)."""
    return {spec: quantize(tiny, make_config(name, **kw), name=f"loadmem-{name}")
            for spec, name, kw in (("int8", "int8-weight-only", {}),
                                   ("int4", "int4-weight-only", {"group_size": 32}))}


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


@pytest.mark.parametrize("spec", ["int8", "int4"])
def test_quantized_load_materialises_no_float_weight(quantized, spec: str) -> None:
    model = quantized[spec].load_model()
    quant = {n: m for n, m in model.named_modules() if isinstance(m, QuantModule)}
    assert len(quant) == 2 * 7 + 2  # every decoder Linear, the head and the tied embedding
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(emb, Int8Embedding) and isinstance(head, Int8WeightOnlyLinear)
    assert emb.qweight.untyped_storage().data_ptr() == head.qweight.untyped_storage().data_ptr()  # stored once
    # no float matrix anywhere in the model as large as the smallest quantized weight (per-row scales are 1-D)
    smallest = min(m.num_embeddings * m.embedding_dim if isinstance(m, Int8Embedding) else
                   m.in_features * m.out_features for m in quant.values())
    floats = [(n, tuple(t.shape)) for n, t in _tensors(model)
              if t.is_floating_point() and t.dim() >= 2 and t.numel() >= smallest]
    assert floats == []
    assert not any(t.is_meta for _, t in _tensors(model))


def test_read_weights_gives_aligned_private_tensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from llmpress.compress.quantize.storage import ALIGN, read_weights

    g = torch.Generator().manual_seed(0)
    src = {"a": torch.randint(-127, 127, (3, 5), dtype=torch.int8, generator=g),
           "b": torch.randn(7, 3, generator=g), "c": torch.randint(0, 255, (64, 33), dtype=torch.uint8, generator=g),
           "d": torch.randn(5, generator=g).half()}
    save_file(src, str(tmp_path / "w.safetensors"))
    got = read_weights(tmp_path / "w.safetensors")
    ref = load_file(str(tmp_path / "w.safetensors"))
    assert set(got) == set(src)
    for k, t in got.items():
        assert t.dtype == src[k].dtype and torch.equal(t, ref[k]) and torch.equal(t, src[k])
        assert t.data_ptr() % ALIGN == 0, k
    assert len({t.untyped_storage().data_ptr() for t in got.values()}) == len(got)


@pytest.mark.parametrize("spec", ["int8", "int4"])
def test_loaded_artifact_serves_what_the_in_memory_model_serves(tiny, quantized, spec: str) -> None:
    """The artifact read back (pread, no clone of aligned tensors) is the very model quantize built."""
    from llmpress.compress.quantize.base import build_quantized

    name, kw = ("int8-weight-only", {}) if spec == "int8" else ("int4-weight-only", {"group_size": 32})
    built = build_quantized(tiny, make_config(name, **kw)).model
    loaded = quantized[spec].load_model()
    for (n1, t1), (n2, t2) in zip(sorted(built.state_dict().items()), sorted(loaded.state_dict().items()),
                                  strict=True):
        assert n1 == n2 and torch.equal(t1, t2), n1
    tok = tiny.load_tokenizer()
    outs = [[o.token_ids for o in LLM.from_model(m, tok, kv_cache_mb=16).generate(PROMPTS, GREEDY)]
            for m in (built, loaded)]
    assert outs[0] == outs[1]


def test_kv_cache_pages_are_resident_only_once_written(tiny) -> None:
    llm = LLM.from_model(tiny.load_model(), tiny.load_tokenizer(), kv_cache_mb=64)
    runner = llm.engine.runner
    assert runner.k_cache[0].untyped_storage().nbytes() >= 1 << 20  # big enough to be lazily mapped
    assert runner.kv_resident_mb() == 0.0
    llm.generate(PROMPTS, GREEDY)
    used = runner.kv_resident_mb()
    assert used is not None and 0 < used < runner.kv_cache_mb / 4


def test_fused_float_weights_leave_the_mapped_file(tiny) -> None:
    """fp32 from_pretrained maps the safetensors file; the engine's fused q/k/v and gate/up copies make the
    originals' pages dead: they are dropped from RSS, and the engine still generates what HF does."""
    model = tiny.load_model(dtype=torch.float32)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert resident_bytes([q]) is not None
    tok = tiny.load_tokenizer()
    ref = []
    with torch.inference_mode():
        for p in PROMPTS:
            ids = torch.tensor([p])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                 min_new_tokens=12, do_sample=False, pad_token_id=0)
            ref.append(out[0, len(p):].tolist())
    llm = LLM.from_model(model, tok, kv_cache_mb=16)
    assert llm.engine.runner.released_mb > 0
    assert model.model.layers[0].self_attn.q_proj.weight.data_ptr() != q.data_ptr()  # now a view of the fused copy
    assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == ref


def test_mapped_bf16_artifact_serves_as_its_private_copy(tiny) -> None:
    """A bf16 artifact is mapped from its file too: after the release the engine generates exactly what it
    generates on a private in-memory copy of the same model (nothing released there)."""
    import copy

    art = quantize(tiny, make_config("bf16"), name="loadmem-bf16")
    tok = tiny.load_tokenizer()
    mapped = art.load_model()
    private = copy.deepcopy(mapped)
    assert mapped.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    outs, released = [], []
    for m in (mapped, private):
        llm = LLM.from_model(m, tok, kv_cache_mb=16)
        released.append(llm.engine.runner.released_mb)
        outs.append([o.token_ids for o in llm.generate(PROMPTS, GREEDY)])
    assert released[0] > 0 and released[1] == 0
    assert outs[0] == outs[1]


def test_release_file_pages_keeps_live_and_anonymous_memory(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    heap = torch.arange(1 << 16, dtype=torch.float32)
    assert release_file_pages([heap.untyped_storage()]) == 0  # not file-backed: never touched
    assert torch.equal(heap, torch.arange(1 << 16, dtype=torch.float32))
    save_file({"w": torch.ones(1 << 16)}, str(tmp_path / "f.safetensors"))
    with safe_open(str(tmp_path / "f.safetensors"), framework="pt") as f:  # mmap-backed tensor
        w = f.get_tensor("w")
    w.add_(1.0)  # private pages, written: must not be reverted while `w` lives
    assert release_file_pages([w.untyped_storage()]) == 0
    assert torch.equal(w, torch.full((1 << 16,), 2.0))


@pytest.mark.slow
def test_smollm2_fp32_engine_keeps_one_copy_of_fused_weights(smollm2) -> None:
    """On the real model every fused q/k/v and gate/up weight's file pages leave RSS (whole pages only)."""
    llm = LLM.from_model(smollm2.load_model(dtype=torch.float32), smollm2.load_tokenizer())
    r = llm.engine.runner
    fused = sum(m.weight.nbytes for m in [*r.qkv_mod, *r.gate_up_mod]) / 2**20
    assert 0.95 * fused <= r.released_mb <= fused
    assert r.kv_resident_mb() == 0.0
