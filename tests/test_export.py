"""Exports of tiny-llama to onnx, gguf and triton, loaded back with the real runtimes and compared
with the source; lineage and registry rows; bad input -> one line, non-zero exit, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch


def llmpress(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "llmpress.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=900)


def torch_greedy(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def prompts(tiny):
    tok = tiny.load_tokenizer()
    a = tok("def add(a, b):\n    return a + b  # a small python example", add_special_tokens=False)["input_ids"]
    b = tok("The quick brown fox jumps over the lazy dog, twice over.", add_special_tokens=False)["input_ids"]
    return [a[:12], b[:12]]


@pytest.fixture(scope="module")
def tiny_model(tiny):
    return tiny.load_model(dtype=torch.float32)


@pytest.fixture(scope="module")
def onnx_fp32(tiny):
    from llmpress.export import export, make_config

    return export(tiny, make_config("onnx", precision="fp32"))


@pytest.fixture(scope="module")
def gguf_f32(tiny):
    from llmpress.export import export, make_config

    return export(tiny, make_config("gguf", precision="fp32"))


def test_onnx_fp32_is_a_verified_child_that_onnxruntime_genai_runs(tiny, onnx_fp32, tiny_model, prompts):
    from llmpress.engine.backends.ort import OrtGenAILM
    from llmpress.registry import get_registry

    art = onnx_fp32
    m = art.manifest
    assert (m.format, m.loader, m.parent, m.step.name) == ("onnx", "onnx", tiny.id, "export")
    assert m.step.params["format"] == "onnx" and m.step.params["precision"] == "fp32"
    row = get_registry().get(art.id)
    assert (row.parent_id, row.format, row.step_name) == (tiny.id, "onnx", "export")
    for f in ("model.onnx", "genai_config.json", "tokenizer.json"):
        assert (art.path / f).is_file(), f
    genai = json.loads((art.path / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["num_key_value_heads"] == 2
    v = m.extra["export"]["verification"]
    assert v["exact"] and v["max_abs_logit_diff"] < 1e-3 and v["greedy_identical"] == v["prompts"]
    rt = art.load_model()
    assert isinstance(rt, OrtGenAILM)
    with torch.no_grad():
        ref = tiny_model(input_ids=torch.tensor([prompts[0]])).logits[0].numpy()
    assert np.abs(rt.logits(prompts[0]) - ref).max() < 1e-3
    # batched greedy through ONNX Runtime GenAI == torch greedy, row by row
    same_len = [p[:10] for p in prompts]
    assert rt.greedy(same_len, 6) == [torch_greedy(tiny_model, p, 6) for p in same_len]


@pytest.fixture(scope="module")
def int4_g32(tiny):
    from llmpress.compress.quantize import make_config as qconfig
    from llmpress.compress.quantize import quantize

    return quantize(tiny, qconfig("int4-weight-only", group_size=32))


# int4 ONNX must reproduce llmpress's own int4 model: the same blocks in fp32 arithmetic (MatMulNBits at
# accuracy level 1), so logits agree to float rounding; a wrong nibble order, scale or min is O(0.1-1).
INT4_ATOL = 1e-3


def test_onnx_int4_is_llmpress_int4_g32_in_matmulnbits(tiny, int4_g32, prompts):
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    from llmpress.export import export, make_config

    art = export(tiny, make_config("onnx", precision="int4"))  # from the float source: quantized as llmpress does
    graph = onnx.load(str(art.path / "model.onnx")).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert {(a.name, a.i) for n in nbits for a in n.attribute if a.name in ("block_size", "bits")} == \
        {("block_size", 32), ("bits", 4)}  # int4 body in blocks of 32; the int8 head is a float MatMul
    # B and scales are the int4 artifact's stored codes and scales (q, k, v rows fused as the builder fuses them)
    sd = load_file(str(int4_g32.path / "model.safetensors"))
    node = next(n for n in nbits if "layers.1/attn/qkv_proj" in n.name)
    pre = "model.layers.1.self_attn."
    qweight = np.concatenate([sd[pre + p + ".qweight"] for p in ("q_proj", "k_proj", "v_proj")])
    assert np.array_equal(inits[node.input[1]].reshape(qweight.shape), qweight)
    assert np.array_equal(inits[node.input[2]], np.concatenate(
        [sd[pre + p + ".scales"] for p in ("q_proj", "k_proj", "v_proj")]).astype(np.float32))
    mins = inits["model.layers.1.attn.qkv_proj.MatMul.weight_min"]
    assert np.array_equal(mins.T, np.concatenate([sd[pre + p + ".mins"] for p in ("q_proj", "k_proj", "v_proj")]))
    codes = sd["lm_head.qweight"] if "lm_head.qweight" in sd else sd["model.embed_tokens.qweight"]
    row_scales = sd["lm_head.scales"] if "lm_head.scales" in sd else sd["model.embed_tokens.scales"]
    # the tied embedding gathers llmpress's int8 head blocks; the head multiplies by the very same values
    gbq = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    data = gbq.input[0]
    if data not in inits:  # the builder reshapes the head's [V, K/g, g] blocks to [V, K] for the gather
        data = next(n for n in graph.node if data in n.output).input[0]
    assert np.array_equal(inits[data].reshape(codes.shape).astype(np.int16) - 128, codes)
    head = next(n for n in graph.node if n.name == "/llmpress/lm_head/MatMulF32")
    assert np.array_equal(inits[head.input[1]], (codes.astype(np.float32) * row_scales.astype(np.float32)[:, None]).T)
    facts = art.manifest.extra["export"]
    assert facts["int4"]["matmulnbits_int4"] == 2 * 5 and facts["int4"]["int8_head"] == 1
    assert facts["int4"]["head_matmul"] == "float"
    v = facts["verification"]  # vs the float source, and vs llmpress int4 (which it must reproduce)
    assert v["runtime"] == "onnxruntime-genai" and not v["exact"] and v["top1_agreement"] > 0.5
    assert v["llmpress_int4"]["max_abs_logit_diff"] < INT4_ATOL and v["llmpress_int4"]["greedy_identical"] == 2
    # logits through ONNX Runtime GenAI == llmpress int4's own, position by position
    rt, ref_model = art.load_model(), int4_g32.load_model()
    for p in prompts:
        with torch.no_grad():
            ref = ref_model(input_ids=torch.tensor([p])).logits[0].float().numpy()
        assert np.abs(rt.logits(p) - ref).max() < INT4_ATOL
    # --head-matmul int8: the smallest file, the same numbers (8-bit MatMulNBits over the same blocks); the
    # default float head costs 4 bytes a head weight on top (tiny-llama is mostly its vocabulary)
    small = export(tiny, make_config("onnx", precision="int4", head_matmul="int8"))
    assert small.manifest.extra["export"]["int4"]["head_matmul"] == "int8"
    assert small.bytes_on_disk() < 0.5 * sum(p.stat().st_size for p in tiny.path.glob("*.safetensors"))
    assert small.bytes_on_disk() < art.bytes_on_disk()
    rt8 = small.load_model()
    for p in prompts:
        assert np.abs(rt8.logits(p) - rt.logits(p)).max() < INT4_ATOL


def test_onnx_int4_from_an_int4_artifact_uses_its_stored_blocks(tiny, int4_g32, prompts):
    from llmpress.compress.quantize import make_config as qconfig
    from llmpress.compress.quantize import quantize
    from llmpress.export import export, make_config
    from llmpress.export.base import ExportError

    art = export(int4_g32, make_config("onnx", precision="int4"))
    assert art.manifest.parent == int4_g32.id
    facts = art.manifest.extra["export"]
    assert "stored codes" in facts["int4"]["from"] and facts["verification"]["exact"]
    assert facts["verification"]["max_abs_logit_diff"] < INT4_ATOL
    rt, ref_model = art.load_model(), int4_g32.load_model()
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor([prompts[1]])).logits[0].float().numpy()
    assert np.abs(rt.logits(prompts[1]) - ref).max() < INT4_ATOL
    q64 = quantize(tiny, qconfig("int4-weight-only", group_size=64))
    with pytest.raises(ExportError, match="blocks of 32"):
        export(q64, make_config("onnx", precision="int4"))
    with pytest.raises(ExportError, match="cannot read at fp32"):
        export(int4_g32, make_config("onnx", precision="fp32"))


def test_gguf_f32_round_trips_through_our_gguf_import(tiny, gguf_f32, tiny_model):
    import gguf

    from llmpress.sources import resolve

    art = gguf_f32
    assert (art.manifest.format, art.manifest.loader, art.manifest.parent) == ("gguf", "gguf", tiny.id)
    reader = gguf.GGUFReader(art.path / "model.gguf")
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "llama"
    back = resolve(str(art.path / "model.gguf"))  # sources/gguf.py: the import path users have
    model = back.load_model(dtype=torch.float32)
    ref = tiny_model.state_dict()
    got = model.state_dict()
    for k, v in ref.items():
        assert torch.equal(got[k], v), k
    v = art.manifest.extra["export"]["verification"]
    assert v["exact"] and v["max_abs_logit_diff"] < 1e-3 and v["greedy_identical"] == v["prompts"]


def test_gguf_runs_in_llama_cpp_when_installed(gguf_f32, tiny_model, prompts):
    pytest.importorskip("llama_cpp")
    from llmpress.engine.backends.llamacpp import LlamaCppLM

    rt = LlamaCppLM(gguf_f32.path)
    with torch.no_grad():
        ref = tiny_model(input_ids=torch.tensor([prompts[0]])).logits[0].numpy()
    assert np.abs(rt.logits(prompts[0]) - ref).max() < 1e-3
    assert rt.greedy(prompts, 6) == [torch_greedy(tiny_model, p, 6) for p in prompts]
    # llama.cpp's own tokenizer reads the vocabulary and merges written into the file
    text = "def add(a, b):\n    return a + b"
    assert rt.llm.tokenize(text.encode(), add_bos=False, special=False) == \
        gguf_f32.load_tokenizer()(text, add_special_tokens=False)["input_ids"]


def test_gguf_q4_1_from_int4_g32_maps_without_requantizing(tiny):
    import gguf
    from gguf import quants

    from llmpress.compress.quantize import make_config as qconfig
    from llmpress.compress.quantize import quantize
    from llmpress.compress.quantize.layers import Int4WeightOnlyLinear
    from llmpress.export import export, make_config
    from llmpress.export.base import ExportError

    q32 = quantize(tiny, qconfig("int4-weight-only", group_size=32))
    art = export(q32, make_config("gguf", precision="int4"))  # int4 -> q4_1
    facts = art.manifest.extra["export"]
    assert facts["gguf_type"] == "q4_1" and facts["from_quantized"] == "int4-weight-only"
    assert facts["tensors_mapped_without_requantizing"] == 2 * 7 + 1  # 7 linears a layer + the int8 head
    reader = gguf.GGUFReader(art.path / "model.gguf")
    t = {x.name: x for x in reader.tensors}
    assert t["blk.0.attn_v.weight"].tensor_type.name == "Q4_1" and t["token_embd.weight"].tensor_type.name == "Q8_0"
    got = quants.dequantize(t["blk.0.attn_v.weight"].data, gguf.GGMLQuantizationType.Q4_1)
    from safetensors.torch import load_file

    sd = load_file(str(q32.path / "model.safetensors"))
    lin = Int4WeightOnlyLinear(128, 64, group_size=32)
    pre = "model.layers.0.self_attn.v_proj."
    lin.qweight, lin.scales, lin.mins = sd[pre + "qweight"], sd[pre + "scales"], sd[pre + "mins"]
    assert np.array_equal(got, lin.dequantize().numpy())  # bit-exact: same codes, scales and mins
    assert art.manifest.extra["export"]["verification"]["top1_agreement"] > 0.9
    q64 = quantize(tiny, qconfig("int4-weight-only", group_size=64))
    with pytest.raises(ExportError, match="group size 32"):
        export(q64, make_config("gguf", precision="q4_1"))


def test_gguf_quantized_precisions_from_float(tiny):
    import gguf

    from llmpress.export import export, make_config

    art = export(tiny, make_config("gguf", precision="q4_0"))
    types = {x.name: x.tensor_type.name for x in gguf.GGUFReader(art.path / "model.gguf").tensors}
    assert types["blk.1.ffn_down.weight"] == "Q4_0" and types["token_embd.weight"] == "Q8_0"
    assert types["blk.1.attn_norm.weight"] == "F32"
    assert art.manifest.extra["export"]["verification"]["top1_agreement"] > 0.5


def test_triton_repository_parses_as_model_config_and_runs_in_onnxruntime(tiny, tiny_model, prompts, tmp_path):
    from google.protobuf import text_format

    from llmpress.export.triton import model_config_pb2 as pb2

    model_config_pb2 = pb2()

    out = tmp_path / "repo"
    r = llmpress("export", "builtin:tiny-llama", "--format", "triton", "--out", str(out), "--no-eval",
                 "--model-name", "tiny", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["format"] == "triton" and res["parent"] == tiny.id
    mc = text_format.Parse((out / "tiny" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (mc.name, mc.backend, mc.max_batch_size) == ("tiny", "onnxruntime", 8)
    assert list(mc.dynamic_batching.preferred_batch_size) == [4, 8]
    assert mc.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "tiny" / "1" / "model.onnx"))
    assert {i.name for i in mc.input} == {i.name for i in sess.get_inputs()}
    assert {o.name for o in mc.output} == {o.name for o in sess.get_outputs()}
    logits = next(o for o in mc.output if o.name == "logits")
    assert list(logits.dims) == [-1, tiny_model.config.vocab_size]
    from llmpress.artifact import Artifact

    rt = Artifact.open(out).load_model()
    with torch.no_grad():
        ref = tiny_model(input_ids=torch.tensor([prompts[1]])).logits[0].numpy()
    assert np.abs(rt.logits(prompts[1]) - ref).max() < 1e-3
    assert rt.greedy([prompts[1]], 5) == [torch_greedy(tiny_model, prompts[1], 5)]


@pytest.mark.slow  # five fresh-process evaluations: ~1-2 min
def test_eval_measures_exports_like_any_artifact(tiny, onnx_fp32, gguf_f32):
    common = ["--max-tokens", "300", "--batch-sizes", "1,2", "--new-tokens", "4", "--repeats", "1", "--json"]
    src = json.loads(llmpress("eval", tiny.id, "--no-speed", *common).stdout)
    for art, runtime in ((onnx_fp32, "onnxruntime-genai"), (gguf_f32, None)):
        r = llmpress("eval", art.id, *common)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        q = res["quality"]
        assert q["tokens"] == src["quality"]["tokens"]  # the same windows
        assert abs(q["perplexity"] / src["quality"]["perplexity"] - 1) < 1e-3
        assert abs(q["delta_ppl_pct"]) < 0.1
        assert res["speed"]["decode"]["b2"]["tok_s"]["median"] > 0 and res["speed"]["peak_rss_mb"] > 0
        assert runtime is None or res["speed"]["runner"] == runtime
        assert res["size"]["params"] > 0 and res["size"]["bytes_on_disk"] == art.bytes_on_disk()
    r = llmpress("export", "--recommend", "--max-memory-mb", "100000", "--max-quality-drop", "1", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["best"] is not None and rec["best"]["fits"]
    assert {onnx_fp32.id, gguf_f32.id} <= {c["id"] for c in rec["candidates"] if c["fits"]}
    r = llmpress("export", "--recommend", "--max-memory-mb", "1", "--max-quality-drop", "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["best"] is None


def _state() -> tuple[set[str], set[str]]:
    from llmpress.artifact import artifacts_dir
    from llmpress.registry import get_registry

    return {p.name for p in artifacts_dir().iterdir()}, {r.id for r in get_registry().list()}


def test_bad_input_one_line_nonzero_nothing_written(tiny, onnx_fp32, tmp_path):
    from llmpress.errors import ConfigError
    from llmpress.export import export, make_config
    from llmpress.export.base import ExportFormat, check_runtime
    from llmpress.export.onnx import OnnxConfig

    taken = tmp_path / "taken"
    taken.mkdir()
    other = tmp_path / "qwen"
    shutil.copytree(tiny.path, other, ignore=shutil.ignore_patterns("llmpress.json"))  # a plain HF directory
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    uneven = tmp_path / "uneven"
    shutil.copytree(tiny.path, uneven, ignore=shutil.ignore_patterns("llmpress.json"))
    (uneven / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 3, "head_dim": 32}))
    before = _state()
    cases = [
        (["builtin:tiny-llama", "--format", "tflite"], "unknown export format"),
        (["builtin:tiny-llama", "--format", "gguf", "--precision", "q3_k"], "has no precision"),
        (["builtin:tiny-llama", "--format", "onnx", "--precision", "fp16"], "has no precision"),
        (["builtin:tiny-llama", "--format", "onnx", "--precision", "int4", "--block-size", "16"], "no size 16"),
        (["builtin:tiny-llama", "--format", "gguf", "--block-size", "32"], "has no option block_size"),
        (["builtin:tiny-llama", "--format", "gguf", "--out", str(taken)], "already exists"),
        ([str(other), "--format", "gguf"], "GGUF export handles LlamaForCausalLM"),
        ([str(uneven), "--format", "onnx"], "GroupQueryAttention"),
        (["--recommend", "--max-memory-mb", "10"], "--recommend needs"),
    ]
    for args, expect in cases:
        r = llmpress("export", *args, "--no-eval") if "--recommend" not in args else llmpress("export", *args)
        assert r.returncode != 0, args
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and expect in lines[0], (args, r.stderr)
    assert _state() == before and list(taken.iterdir()) == []
    # a missing optional runtime is named with the extra that installs it
    fake = ExportFormat("x", OnnxConfig, lambda *a: {}, lambda *a: {}, ("fp32",), "onnx", "",
                        requires=("llmpress_no_such_runtime",), extra="onnx")
    with pytest.raises(ConfigError) as err:
        check_runtime(fake)
    assert "llmpress_no_such_runtime" in err.value.message and err.value.fix == "pip install 'llmpress[onnx]'"
    # an adapter / export artifact is not a source
    with pytest.raises(Exception, match="not a model in Hugging Face layout"):
        export(onnx_fp32, make_config("gguf"))


def test_ort_genai_engine_serves_requests_side_by_side(onnx_fp32, tiny_model, prompts):
    """The LLMEngine surface over ONNX Runtime GenAI: greedy equals torch; stop, abort and bad input behave."""
    from llmpress.engine.backends.ort import OrtGenAIEngine
    from llmpress.engine.sequence import SamplingParams
    from llmpress.errors import DataError

    eng = OrtGenAIEngine(onnx_fp32, max_batch=2)
    seqs = [eng.add_request(p, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)) for p in prompts]
    gone = eng.add_request(prompts[0], SamplingParams(max_tokens=50, temperature=0.0))
    eng.abort(gone)
    outs: dict[int, list] = {}
    for _ in range(40):
        if not eng.has_work():
            break
        for o in eng.step():
            outs.setdefault(o.seq_id, []).append(o)
    assert not eng.has_work() and gone.finish_reason == "abort"
    assert outs[gone.seq_id][-1].finish_reason == "abort"
    for s, p in zip(seqs, prompts, strict=True):
        assert s.finish_reason == "length" and s.output_ids == torch_greedy(tiny_model, p, 6)
        # the same immutable outputs as the torch engine: tokens and text add up to the whole answer
        assert [t for o in outs[s.seq_id] for t in o.token_ids] == s.output_ids
        assert "".join(o.text for o in outs[s.seq_id]) == eng.tokenizer.decode(s.output_ids, skip_special_tokens=True)
    with pytest.raises(DataError):
        eng.make_sequence([10**9], SamplingParams())


@pytest.mark.slow  # prunes with calibration, then two exports: ~1 min
def test_pruned_model_with_explicit_head_dim_exports_exactly(tiny):
    """Structured pruning leaves 2 heads of 32 in a 128-wide model (head_dim != hidden / heads): both
    formats carry the head size explicitly and reproduce the pruned model."""
    from llmpress.compress.prune import PruneConfig, prune
    from llmpress.export import export, make_config

    pruned = prune(tiny, PruneConfig(method="structured", heads="50%", mlp="25%", calibration_samples=2, seq_len=32))
    cfg = json.loads((pruned.path / "config.json").read_text())
    assert cfg["num_attention_heads"] * cfg["head_dim"] != cfg["hidden_size"]
    for fmt in ("gguf", "onnx"):
        v = export(pruned, make_config(fmt)).manifest.extra["export"]["verification"]
        assert v["exact"] and v["max_abs_logit_diff"] < 1e-3 and v["greedy_identical"] == v["prompts"], fmt


def test_serve_onnx_export_over_http(onnx_fp32, tiny_model, prompts):
    """`llmpress serve` on an onnx artifact: ONNX Runtime GenAI behind the same OpenAI API and error
    contract — greedy text equals the torch model's, streams equal non-streams, scoring is refused clearly."""
    import httpx
    from live import start_server

    srv = start_server(onnx_fp32, auth=False, max_batch=4)
    try:
        tok = srv.engine.tokenizer
        name = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
        body = {"model": name, "prompt": prompts[0], "max_tokens": 6, "temperature": 0, "ignore_eos": True}
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200
        ref = torch_greedy(tiny_model, prompts[0], 6)
        assert r.json()["choices"][0]["text"] == tok.decode(ref, skip_special_tokens=True)
        assert r.json()["usage"] == {"prompt_tokens": len(prompts[0]), "completion_tokens": 6, "total_tokens":
                                     len(prompts[0]) + 6}
        import json

        with httpx.stream("POST", srv.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as s:
            text = "".join(json.loads(x[6:])["choices"][0]["text"] for x in s.iter_lines() if x.startswith("data: {"))
        assert text == r.json()["choices"][0]["text"]
        r = httpx.post(srv.url + "/v1/completions", json={**body, "echo": True, "logprobs": 0, "max_tokens": 0})
        assert r.status_code == 422 and r.json()["error"]["param"] == "prompt_logprobs"
        assert "llmpress_kv_blocks_used" not in httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()
