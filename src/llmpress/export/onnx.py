"""onnx: a decoder with KV-cache inputs/outputs + `genai_config.json` + tokenizer, for ONNX Runtime GenAI.

Written by ONNX Runtime GenAI's own model builder (`onnxruntime_genai.models.builder`) from the
source's Hugging Face directory, so the files are exactly what that runtime expects (its
GroupQueryAttention / MatMulNBits operators, its config). int4 / int8 are MatMulNBits
weight-only blocks of `block_size` (32), asymmetric like llmpress's int4 and with the LM head
in int8, as llmpress's int4-weight-only keeps it. fp16 ONNX is a GPU format in that builder,
so on this CPU path the precisions are fp32, int8 and int4.
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
    block_size: int = 32  # MatMulNBits block (int4 / int8)
    symmetric: bool = False  # asymmetric blocks (uint4 + zero point), as llmpress's int4
    head_int8: bool = True  # LM head in int8 when the body is int4 (llmpress's int4 keeps an int8 head)
    # MatMulNBits activation precision: 1 = fp32 (default), 4 = int8 activations (the builder's CPU
    # default, faster). SmolLM2 int4 Δppl on 2048 pydoc tokens: rtn + level 4 +17.5 %, k_quant + level 1
    # +16.3 %; on a 600-token probe k_quant / rtn at level 1: +12.8 % / +13.6 %.
    accuracy_level: int = 1
    # the builder's weight quantizer: k_quant (searches scales) or rtn
    algo: str = "k_quant"

    def validate(self) -> None:
        if self.block_size not in BLOCK_SIZES:
            raise ConfigError(f"MatMulNBits block size {self.block_size} is not supported",
                              f"use one of {', '.join(map(str, BLOCK_SIZES))}", param="block_size")
        if self.algo not in ("k_quant", "rtn"):
            raise ConfigError(f"unknown MatMulNBits quantizer {self.algo!r}", "use k_quant or rtn", param="algo")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"accuracy_level {self.accuracy_level} is not 0..4", "use 1 (fp32) or 4 (int8)")


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
    """Run ONNX Runtime GenAI's model builder on the source directory into `dest`."""
    cfg = check_source(src)
    if src.manifest.loader != "hf":
        raise ExportError(f"{src.name} is stored by llmpress's {src.manifest.loader!r} loader, which the ONNX "
                          "builder cannot read", "export its float parent with --precision int4 (MatMulNBits)")
    check_heads(cfg)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src.path), "-o", str(dest),
           "-p", config.precision, "-e", "cpu"]
    extra = []
    if config.precision in ("int4", "int8"):
        # An explicit algo_config: the builder's default algorithm writes an invalid graph (a dangling int8
        # head weight) when a tied embedding shares the int8 head; with rtn / k_quant the embedding is
        # GatherBlockQuantized on the very same int8 blocks, as llmpress's int4 shares its int8 head.
        extra += [f"algo_config={config.algo}", f"block_size={config.block_size}",
                  f"is_symmetric={str(config.symmetric).lower()}",
                  f"accuracy_level={config.accuracy_level}"]
        if config.precision == "int4" and config.head_int8:
            extra.append("matmul_mixed_precision=last_matmul:int8")
    task = progress.add_task(f"onnx {config.precision}: ONNX Runtime GenAI model builder", total=None) \
        if progress else None
    with tempfile.TemporaryDirectory(prefix="llmpress-onnx-cache-") as cache:
        full = cmd + ["-c", cache] + (["--extra_options", *extra] if extra else [])
        proc = subprocess.run(full, capture_output=True, text=True, env=_env())
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
    return {"kv": kv_facts(cfg), "params_count": _params(src), "builder": _builder_version(),
            "files": sorted(p.name for p in dest.iterdir())}


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
    from llmpress.engine.backends.ort import OrtGenAILM

    return compare(OrtGenAILM(dest, manifest_stub(facts)), src, exact=config.precision == "fp32")


register_format(ExportFormat(
    "onnx", OnnxConfig, build_onnx, verify_onnx, ("fp32", "int8", "int4"), "onnx",
    "decoder + KV cache, genai_config.json, tokenizer: ONNX Runtime GenAI (int4/int8 = MatMulNBits)",
    requires=("onnx", "onnxruntime", "onnxruntime_genai", "onnx_ir"), extra="onnx"))
