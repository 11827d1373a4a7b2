"""onnx: a decoder with KV-cache inputs/outputs + `genai_config.json` + tokenizer, for ONNX Runtime GenAI.

Written by ONNX Runtime GenAI's own model builder (`onnxruntime_genai.models.builder`) from the
source's Hugging Face directory, so the files are exactly what that runtime expects (its
GroupQueryAttention / MatMulNBits operators, its config). fp16 ONNX is a GPU format in that
builder, so on this CPU path the precisions are fp32, int8 and int4.

int8 is the builder's own MatMulNBits quantization. int4 is llmpress's own `int4-weight-only`
blocks (group = `block_size`, 32): quantized here from a float source exactly as `llmpress
quantize` does, or read from an int4-weight-only source artifact, and written into the builder's
int4 graph by `onnx_int4.py` (codes and scales as MatMulNBits, the float block minimums as a small
extra product, the int8 head and tied embedding from llmpress's int8 head). The builder's own
int4 (integer zero points) cannot hold those float minimums and measured +16.3 % Δppl on SmolLM2
(itself a Q4_1 model, on exactly such a grid); written from llmpress's blocks, int4 ONNX measures
Δppl +0.121 %, the same as llmpress int4 g32 (+0.121 %) on the same 2048 pydoc tokens, and its
logits reproduce llmpress int4's (max |Δlogit| 5e-4 on SmolLM2's verification prompts).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmpress.artifact import Artifact
from llmpress.errors import ConfigError
from llmpress.export.base import ExportConfig, ExportError, ExportFormat, check_source, register_format
from llmpress.export.verify import compare, count_source_params, manifest_stub

BLOCK_SIZES = (16, 32, 64, 128, 256)


@dataclass
class OnnxConfig(ExportConfig):
    precision: str = "fp32"
    block_size: int = 32  # MatMulNBits block (int4: llmpress's int4 group size; int8)
    symmetric: bool = False  # int8 only: symmetric blocks (int4 is llmpress's asymmetric int4)
    head_int8: bool = True  # LM head in int8 when the body is int4 (llmpress's int4 keeps an int8 head)
    # MatMulNBits activation precision: 1 = fp32 (default: reproduces llmpress's fp32-activation kernels),
    # 4 = int8 activations (the builder's CPU default, faster, less exact).
    accuracy_level: int = 1
    # int8 only: the builder's weight quantizer, k_quant (searches scales) or rtn
    algo: str = "k_quant"
    # int4: how the int8 head is computed. "float": a float MatMul over its int8 values (fast on CPU, +4 bytes
    # a head weight on disk); "int8": 8-bit MatMulNBits (smallest; ONNX Runtime's CPU kernel dequantizes the
    # whole head on every token at accuracy level 1). The tied embedding gathers the int8 blocks either way.
    head_matmul: str = "float"

    def validate(self) -> None:
        if self.block_size not in BLOCK_SIZES:
            raise ConfigError(f"MatMulNBits block size {self.block_size} is not supported",
                              f"use one of {', '.join(map(str, BLOCK_SIZES))}", param="block_size")
        if self.algo not in ("k_quant", "rtn"):
            raise ConfigError(f"unknown MatMulNBits quantizer {self.algo!r}", "use k_quant or rtn", param="algo")
        if self.head_matmul not in ("float", "int8"):
            raise ConfigError(f"unknown head_matmul {self.head_matmul!r}", "use float or int8", param="head_matmul")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"accuracy_level {self.accuracy_level} is not 0..4", "use 1 (fp32) or 4 (int8)")
        if self.precision == "int4":
            from llmpress.compress.quantize.layers import INT4_GROUP_SIZES

            if self.block_size not in INT4_GROUP_SIZES:
                raise ConfigError(f"int4 ONNX is written from llmpress's int4 groups, which have no size "
                                  f"{self.block_size}", f"use one of {', '.join(map(str, INT4_GROUP_SIZES))}",
                                  param="block_size")
            if self.symmetric or not self.head_int8:
                raise ConfigError("int4 ONNX is llmpress's int4: asymmetric blocks with an int8 head",
                                  "drop symmetric / head_int8 for int4 (they apply to int8)")


def kv_facts(cfg: dict[str, Any]) -> dict[str, int]:
    heads = int(cfg["num_attention_heads"])
    return {"layers": int(cfg["num_hidden_layers"]), "kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or cfg["hidden_size"] // heads), "heads": heads}


def check_heads(cfg: dict[str, Any]) -> None:
    """GroupQueryAttention needs whole query-head groups per kv head; say so instead of a builder traceback."""
    kv = kv_facts(cfg)
    if kv["heads"] % kv["kv_heads"]:
        raise ExportError(f"the model has {kv['heads']} query heads for {kv['kv_heads']} kv heads, not a whole "
                          "number per group, which ONNX Runtime's GroupQueryAttention cannot run",
                          "prune heads by whole groups (`llmpress prune --method structured` keeps them even)")


def build_onnx(src: Artifact, config: OnnxConfig, dest: Path, progress: Any = None) -> dict[str, Any]:
    """Run ONNX Runtime GenAI's model builder on the source directory into `dest` (int4: then write
    llmpress's own int4 blocks into its MatMulNBits, see `onnx_int4.py`)."""
    cfg = check_source(src)
    check_heads(cfg)
    if config.precision != "int4" and src.manifest.loader != "hf":
        raise ExportError(f"{src.name} is stored by llmpress's {src.manifest.loader!r} loader, which the ONNX "
                          f"builder cannot read at {config.precision}",
                          "export its float parent, or export an int4-weight-only artifact with --precision int4")
    weights = None
    with tempfile.TemporaryDirectory(prefix="llmpress-onnx-") as tmp:
        model_dir = src.path
        if config.precision == "int4":
            from llmpress.export.onnx_int4 import float_source_dir, llmpress_int4

            task = progress.add_task(f"onnx int4: llmpress int4 g{config.block_size} blocks", total=None) \
                if progress else None
            weights = llmpress_int4(src, config.block_size)
            if src.manifest.loader != "hf":
                model_dir = float_source_dir(weights, src, Path(tmp) / "float")
            if progress is not None:
                progress.update(task, total=1, completed=1)
        _run_builder(src, model_dir, config, dest, Path(tmp) / "cache", progress)
    facts: dict[str, Any] = {"kv": kv_facts(cfg), "params_count": _params(src), "builder": _builder_version()}
    if weights is not None:
        from llmpress.export.onnx_int4 import rewrite_matmulnbits

        facts["int4"] = rewrite_matmulnbits(dest / "model.onnx", weights, progress,
                                            head_float=config.head_matmul == "float")
        _REFERENCE.clear()  # at most one (the latest) kept: a Triton build never verifies through it
        _REFERENCE[str(dest)] = weights.model
    facts["files"] = sorted(p.name for p in dest.iterdir())
    return facts


# the llmpress int4 model an int4 export was written from, kept for its verification (same process)
_REFERENCE: dict[str, Any] = {}


def _run_builder(src: Artifact, model_dir: Path, config: OnnxConfig, dest: Path, cache: Path,
                 progress: Any) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(dest),
           "-p", config.precision, "-e", "cpu", "-c", str(cache)]
    extra = []
    if config.precision in ("int4", "int8"):
        # An explicit algo_config: the builder's default algorithm writes an invalid graph (a dangling int8
        # head weight) when a tied embedding shares the int8 head; with rtn / k_quant the embedding is
        # GatherBlockQuantized on the very same int8 blocks, as llmpress's int4 shares its int8 head.
        # int4: the builder's blocks only lay out the graph (llmpress's replace them), so rtn, the fast one.
        extra += [f"algo_config={'rtn' if config.precision == 'int4' else config.algo}",
                  f"block_size={config.block_size}", f"is_symmetric={str(config.symmetric).lower()}",
                  f"accuracy_level={config.accuracy_level}"]
        if config.precision == "int4" and config.head_int8:
            extra.append("matmul_mixed_precision=last_matmul:int8")
    task = progress.add_task(f"onnx {config.precision}: ONNX Runtime GenAI model builder", total=None) \
        if progress else None
    proc = subprocess.run(cmd + (["--extra_options", *extra] if extra else []), capture_output=True, text=True,
                          env=_env())
    if progress is not None:
        progress.update(task, total=1, completed=1)
    if proc.returncode != 0 or not (dest / "model.onnx").is_file():
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()
                 and "WARNING" not in ln and "Warning" not in ln]
        why = next((ln for ln in reversed(lines) if "Error" in ln or "not supported" in ln.lower()),
                   lines[-1] if lines else f"exit {proc.returncode}")
        raise ExportError(f"ONNX Runtime GenAI's model builder could not export {src.name}: {why.strip()}",
                          "export a model architecture the builder supports (Llama, Mistral, Qwen, Phi, Gemma...)")
    for junk in dest.glob("*.tmp"):
        junk.unlink()
    shutil.rmtree(dest / "cache_dir", ignore_errors=True)


def _params(src: Artifact) -> int:
    return int((src.manifest.metrics.get("size") or {}).get("params") or count_source_params(src))


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _builder_version() -> str:
    import importlib.metadata as md

    return f"onnxruntime-genai {md.version('onnxruntime-genai')}"


def verify_onnx(dest: Path, src: Artifact, config: OnnxConfig, facts: dict[str, Any]) -> dict[str, Any]:
    """fp32: reproduce the source. int4: reproduce llmpress's own int4 model (the blocks it was written
    from) to the fp32 tolerance (`llmpress_int4`), and report the agreement with the source as for int8."""
    from llmpress.engine.backends.ort import OrtGenAILM

    rt = OrtGenAILM(dest, manifest_stub(facts))
    if config.precision != "int4":
        return compare(rt, src, exact=config.precision == "fp32")
    model = _REFERENCE.pop(str(dest), None)
    if src.manifest.loader != "hf":  # an int4-weight-only source is llmpress's int4 model itself
        out = compare(rt, src, exact=True)
        ref = out
    else:
        if model is None:
            from llmpress.export.onnx_int4 import llmpress_int4

            model = llmpress_int4(src, config.block_size).model
        ref = compare(rt, _Reference(src, model), exact=True)
        del model
        out = compare(rt, src, exact=False)
    out["llmpress_int4"] = {"group_size": config.block_size,
                            **{k: ref[k] for k in ("max_abs_logit_diff", "top1_agreement", "greedy_identical")}}
    return out


class _Reference:
    """An artifact's tokenizer with an in-memory model: what `compare` reads from a source."""

    def __init__(self, src: Artifact, model: Any) -> None:
        self.src, self.model = src, model

    def load_tokenizer(self) -> Any:
        return self.src.load_tokenizer()

    def load_model(self, **_: Any) -> Any:
        return self.model


register_format(ExportFormat(
    "onnx", OnnxConfig, build_onnx, verify_onnx, ("fp32", "int8", "int4"), "onnx",
    "decoder + KV cache, genai_config.json, tokenizer: ONNX Runtime GenAI (int4/int8 = MatMulNBits)",
    requires=("onnx", "onnxruntime", "onnxruntime_genai", "onnx_ir"), extra="onnx"))
