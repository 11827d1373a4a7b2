"""Quantization schemes on tiny-llama: round-trip, closeness to float, packed sizes, bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# Relative logit error ||q - f|| / ||f|| allowed per scheme on tiny-llama. Its weights are random
# Gaussians (no outliers, nothing for calibration to exploit), which makes 4-bit the worst case.
TOLERANCE = {
    "fp16": 0.005,
    "bf16": 0.03,
    "int8-dynamic": 0.08,
    "int8-weight-only": 0.04,
    "int8-static": 0.12,
    "int4-weight-only": 0.30,
    "qat": 0.30,
}
OPTIONS = {
    "int8-static": {"samples": 4, "seq_len": 64},
    "qat": {"steps": 2, "batch_size": 1, "seq_len": 32},
}


@pytest.fixture(scope="module")
def prompt_ids(tiny):
    tok = tiny.load_tokenizer()
    return torch.tensor([tok("def add(a, b):\n    return a + b  # a small python example", add_special_tokens=False)
                         ["input_ids"]])


@pytest.fixture(scope="module")
def float_logits(tiny, prompt_ids):
    with torch.no_grad():
        return tiny.load_model(dtype=torch.float32)(input_ids=prompt_ids).logits.float()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("scheme", list(TOLERANCE))
def test_scheme_round_trip_and_tolerance(tiny, prompt_ids, float_logits, scheme):
    from llmpress.artifact import Artifact
    from llmpress.compress.quantize import build_quantized, make_config, save_quantized_artifact

    built = build_quantized(tiny, make_config(scheme, **OPTIONS.get(scheme, {})))
    in_memory = _logits(built.model, prompt_ids)
    art = save_quantized_artifact(built)
    assert art.manifest.parent == tiny.id
    assert art.manifest.extra["quantization"]["scheme"] == scheme
    reopened = Artifact.open(art.path)
    loaded = reopened.load_model()
    # Round trip: the stored ints reload to the very same model, bit for bit, on both the
    # GEMM path (long prompt) and the decode-kernel path (<= KERNEL_MAX_ROWS tokens).
    assert torch.equal(_logits(loaded, prompt_ids), in_memory)
    assert torch.equal(_logits(loaded, prompt_ids[:, :4]), _logits(built.model, prompt_ids[:, :4]))
    rel = float((in_memory - float_logits).norm() / float_logits.norm())
    assert rel < TOLERANCE[scheme], f"{scheme}: relative logit error {rel:.4f}"
    assert rel > 0.0  # it really changed precision
    if reopened.manifest.loader == "quantized":
        kinds = {type(m).__name__ for m in loaded.model.layers.modules()}
        assert "Linear" not in kinds  # every decoder Linear was replaced (no float fallback at load)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_kernel_and_gemm_paths_agree(kind):
    """Few rows go through the int8/int4 CPU kernels, many through a GEMM on dequantized weights:
    the same function up to summation order and bf16 output rounding."""
    from torch import nn

    from llmpress.compress.quantize.layers import KERNEL_MAX_ROWS, Int4WeightOnlyLinear, Int8WeightOnlyLinear

    torch.manual_seed(0)
    lin = nn.Linear(256, 384, bias=True)
    q = Int8WeightOnlyLinear.from_float(lin) if kind == "int8" else Int4WeightOnlyLinear.from_float(lin, 64)
    x = torch.randn(4 * KERNEL_MAX_ROWS, 256)
    with torch.no_grad():
        many = q(x)
        few = torch.cat([q(x[i : i + 1]) for i in range(len(x))])
        ref = lin(x)
    assert (few - many).abs().max() <= 0.02 * many.abs().max()
    assert float((many - ref).norm() / ref.norm()) < (0.01 if kind == "int8" else 0.12)


@pytest.mark.parametrize("rows", [1, 3, 5, 8, 17, 32])
def test_our_kernels_match_dequantized_gemm(rows):
    """kernels.cpp computes float32 dot products with the stored ints: equal to a float GEMM on the
    dequantized weight up to summation order, for any row count and a weight-row count that leaves a tail."""
    from torch import nn

    from llmpress.compress.quantize import kernels
    from llmpress.compress.quantize.layers import Int4WeightOnlyLinear, Int8WeightOnlyLinear
    from llmpress.hardware import cpu_has_avx512

    if not cpu_has_avx512():
        pytest.skip("our kernels are built for AVX-512 machines only")
    assert kernels.available(), "the AVX-512 kernels failed to build (see the warning above)"
    torch.manual_seed(rows)
    lin = nn.Linear(192, 389, bias=False)
    x = torch.randn(rows, 192)
    for q in (Int8WeightOnlyLinear.from_float(lin), Int4WeightOnlyLinear.from_float(lin, 64)):
        deq = q.qweight.float() * q.scales[:, None] if isinstance(q, Int8WeightOnlyLinear) else q.dequantize()
        with torch.no_grad():
            y = q(x)
        ref = x @ deq.T
        assert q._kern is not None
        assert float((y - ref).abs().max()) <= 1e-5 * float(ref.abs().max()) + 1e-6, type(q).__name__


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 9, 32, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_float_kernel_matches_aten(rows, dtype):
    """kernels.cpp's float kernel (up to 32 rows of float32 / float16 weights, 8 of bfloat16; aten's beyond)
    equals a float32 GEMM on the same weight up to summation order, with a weight-row count with a tail."""
    from llmpress.compress.quantize import kernels
    from llmpress.hardware import cpu_has_avx512

    if not cpu_has_avx512():
        pytest.skip("our kernels are built for AVX-512 machines only")
    kern = kernels.get()
    assert kern is not None, "the AVX-512 kernels failed to build (see the warning above)"
    torch.manual_seed(rows)
    w = torch.randn(389, 192).to(dtype)
    x = torch.randn(rows, 192)
    ref = x @ w.float().T
    y = kern.float_linear(x, w)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    ours = dtype == torch.float32 or rows <= (8 if dtype == torch.bfloat16 else 32)
    tol = 1e-5 if ours else 1e-2  # beyond our kernel's rows, aten's half-precision GEMM rounds x too
    assert float((y - ref).abs().max()) <= tol * float(ref.abs().max()) + 1e-6


def test_kernel_build_recovers_from_a_killed_builder(tmp_path):
    """torch's build `lock` file outlives a killed build and torch waits on it forever. We hold an
    flock around the build: while a live builder holds it we wait; once it is killed, its `lock`
    file is stale and is removed, so the next build goes ahead instead of hanging."""
    import subprocess
    import sys
    import threading

    from llmpress.compress.quantize import kernels

    d = tmp_path / "build"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, pathlib\n"
         "from llmpress.compress.quantize.kernels import _exclusive\n"
         f"d = pathlib.Path({str(d)!r})\n"
         "with _exclusive(d):\n"
         "    (d / 'lock').touch()\n"  # what torch's FileBaton creates while it builds
         "    print('building', flush=True)\n"
         "    time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "building"
        entered = threading.Event()
        seen: dict[str, bool] = {}

        def build() -> None:
            with kernels._exclusive(d):
                seen["lock file"] = (d / "lock").exists()
                entered.set()

        t = threading.Thread(target=build, daemon=True)
        t.start()
        assert not entered.wait(1.0), "entered the build while another live process was building"
        assert (d / "lock").exists()
        child.kill()  # the builder dies mid-build: its `lock` file stays behind
        child.wait(30)
        assert entered.wait(30), "the build stayed blocked after the builder died"
        assert seen == {"lock file": False}, "the stale lock file was not removed"
    finally:
        child.kill()


def test_loader_does_not_requantize(tiny, prompt_ids):
    """Changing a stored int8 code changes the loaded model: weights come from storage, not floats."""
    from safetensors.torch import load_file, save_file

    from llmpress.artifact import Artifact, hash_tree
    from llmpress.compress.quantize import make_config, quantize

    art = quantize(tiny, make_config("int8-weight-only"))
    before = _logits(art.load_model(), prompt_ids)
    f = art.path / "model.safetensors"
    sd = load_file(str(f))
    key = "model.layers.0.mlp.down_proj.qweight"
    sd[key] = torch.zeros_like(sd[key])
    save_file(sd, str(f), metadata={"format": "pt"})
    art.manifest.files_sha256 = hash_tree(art.path)
    (art.path / "llmpress.json").write_text(art.manifest.to_json())
    after = _logits(Artifact.open(art.path).load_model(), prompt_ids)
    assert not torch.equal(before, after)


def _stored(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: (str(f.get_slice(k).get_dtype()), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_packed_sizes(tiny, group):
    from llmpress.compress.quantize import make_config, quantize

    art = quantize(tiny, make_config("int4-weight-only", group_size=group))
    stored = _stored(art.path)
    q = art.manifest.extra["quantization"]
    cfg = json.loads((art.path / "config.json").read_text())
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    # gate_proj: [inter, hidden] -> uint8 [inter, hidden/2] + fp16 scales/mins [inter, hidden/group]
    p = "model.layers.0.mlp.gate_proj."
    assert stored[p + "qweight"] == ("U8", (inter, hidden // 2))
    assert stored[p + "scales"] == ("F16", (inter, hidden // group))
    assert stored[p + "mins"] == ("F16", (inter, hidden // group))
    assert p + "weight" not in stored
    # The quantized layers take (0.5 + 4/group) bytes a weight: <= 35 % of fp32 for every group >= 32.
    layer_bytes = inter * hidden // 2 + 2 * 2 * inter * hidden // group
    assert layer_bytes / (inter * hidden * 4) == pytest.approx((0.5 + 4 / group) / 4)
    assert layer_bytes / (inter * hidden * 4) <= 0.35
    assert q["modules"]["model.layers.0.mlp.gate_proj"] == {"kind": "int4wo", "group_size": group}
    # Tied head + embedding: one int8 copy, recorded as an alias.
    assert stored["model.embed_tokens.qweight"][0] == "I8"
    assert "lm_head.qweight" not in stored and q["aliases"]["lm_head.qweight"] == "model.embed_tokens.qweight"


def test_int8_packed_sizes(tiny):
    from llmpress.compress.quantize import make_config, quantize

    art = quantize(tiny, make_config("int8-weight-only"))
    stored = _stored(art.path)
    cfg = json.loads((art.path / "config.json").read_text())
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    assert stored["model.layers.1.mlp.down_proj.qweight"] == ("I8", (hidden, inter))
    assert stored["model.layers.1.mlp.down_proj.scales"] == ("F32", (hidden,))
    total = sum(torch.tensor([], dtype=torch.int8).element_size() * 0 + _nbytes(d, s) for d, s in stored.values())
    assert total <= (art.path / "model.safetensors").stat().st_size < total + 64 * 1024


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    size = {"I8": 1, "U8": 1, "F16": 2, "BF16": 2, "F32": 4, "I64": 8}[dtype]
    n = 1
    for d in shape:
        n *= d
    return n * size


def _count(reg) -> tuple[int, int]:
    from llmpress.artifact import artifacts_dir

    return len(reg.list()), len([p for p in artifacts_dir().iterdir()])


@pytest.mark.parametrize("scheme, opts, error, words", [
    ("int4-weight-only", {"group_size": 256}, "ConfigError", "does not divide"),
    ("int4-weight-only", {"group_size": 48}, "ConfigError", "not supported"),
    ("qat", {"group_size": 256, "steps": 1}, "ConfigError", "does not divide"),
    ("int4-weight-only", {"calibration": "builtin:pydoc", "samples": 100000}, "DataError", "fewer than"),
    ("int8-static", {"samples": 100000}, "DataError", "fewer than"),
])
def test_bad_config_leaves_nothing(tiny, fresh_registry, scheme, opts, error, words):
    from llmpress import errors
    from llmpress.compress.quantize import make_config, quantize

    before = _count(fresh_registry)
    with pytest.raises(getattr(errors, error)) as e:
        quantize(tiny, make_config(scheme, **opts))
    assert words in e.value.message and e.value.fix
    assert _count(fresh_registry) == before


def test_unknown_scheme_and_option(tiny):
    from llmpress.compress.quantize import make_config
    from llmpress.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown quantization scheme 'int3'"):
        make_config("int3")
    with pytest.raises(ConfigError, match="has no option group_size"):
        make_config("int8-weight-only", group_size=64)
    with pytest.raises(ConfigError, match="needs calibration"):
        make_config("int4-weight-only", method="gptq")


def test_small_calibration_file(tiny, tmp_path, fresh_registry):
    from llmpress.compress.quantize import make_config, quantize
    from llmpress.errors import DataError

    small = tmp_path / "small.txt"
    small.write_text("\n\n".join(f"paragraph {i} has a few words." for i in range(12)))
    before = _count(fresh_registry)
    with pytest.raises(DataError, match="calibration corpus"):
        quantize(tiny, make_config("int4-weight-only", calibration=str(small), samples=16))
    assert _count(fresh_registry) == before


def test_gptq_beats_rtn_on_layer_error():
    """GPTQ lowers the layer's output error ||XW^T - XQ^T|| vs round-to-nearest on correlated inputs."""
    from llmpress.compress.quantize.gptq import gptq_int4
    from llmpress.compress.quantize.layers import int4_dequantize, int4_group_params, int4_quantize

    torch.manual_seed(0)
    k, n, g = 128, 64, 32
    mix = torch.randn(k, k) / k**0.5 + torch.eye(k)
    x = torch.randn(2048, k) @ mix
    x[:, :4] *= 8  # a few outlier channels, as in real LLM activations
    w = torch.randn(n, k) * 0.05
    s, m = int4_group_params(w, g)
    rtn = int4_dequantize(int4_quantize(w, s, m, g), s, m, g)
    err_rtn = (x @ (w - rtn).t()).norm()
    for act_order in (False, True):
        codes, s2, m2 = gptq_int4(w, x.t() @ x / len(x), g, act_order=act_order)
        gq = int4_dequantize(codes, s2, m2, g)
        err_gptq = (x @ (w - gq).t()).norm()
        assert err_gptq < 0.9 * err_rtn, act_order


def test_quantize_cli(tiny, fresh_registry):
    from typer.testing import CliRunner

    from llmpress.cli.main import _register_all, app

    _register_all()
    res = CliRunner().invoke(app, ["quantize", "builtin:tiny-llama", "--scheme", "int4-weight-only",
                                   "--group-size", "32", "--no-eval", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["quantization"]["group_size"] == 32 and data["parent"] == tiny.id
    assert fresh_registry.get(data["id"]).path
    before = _count(fresh_registry)
    res = CliRunner().invoke(app, ["quantize", "builtin:tiny-llama", "--scheme", "int4-weight-only",
                                   "--group-size", "256", "--no-eval"])
    assert res.exit_code == 6 and "does not divide" in res.output
    res = CliRunner().invoke(app, ["quantize", "builtin:tiny-llama", "--scheme", "int5"])
    assert res.exit_code == 6 and "unknown quantization scheme 'int5'" in res.output
    assert _count(fresh_registry) == before


def test_cpu_flags_are_the_flags_line():
    """The probes read the `flags` line's words, not substrings of /proc/cpuinfo as a whole."""
    from llmpress.hardware import cpu_flags, cpu_has_avx512, cpu_has_bf16

    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo here")
    assert "fpu" in flags and "flags" not in flags and not any(":" in f for f in flags)
    assert cpu_has_avx512() == ("avx512f" in flags)
    assert cpu_has_bf16() == bool({"amx_bf16", "avx512_bf16"} & flags)


def test_machine_info_records_what_a_benchmark_needs():
    """Every benchmark result records CPU model, the relevant flags, threads, torch and the commit."""
    import torch

    from llmpress.hardware import cpu_flags, machine_info

    info = machine_info()
    assert info["cpu_model"] and isinstance(info["cpu_model"], str)
    assert info["threads"] == torch.get_num_threads()
    assert info["torch"] == torch.__version__
    flags = cpu_flags()
    if flags is not None:
        assert set(info["flags"]) <= flags
        assert ("avx512f" in info["flags"]) == ("avx512f" in flags)
    assert info["git_commit"] is None or len(info["git_commit"].split("+")[0]) == 40
