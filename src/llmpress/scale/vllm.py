"""`llmpress serve MODEL --backend vllm`: serve an artifact through vLLM's OpenAI-compatible server on GPUs.

What vLLM can load from llmpress: plain Hugging Face directories (fp32 / fp16 / bf16 weights, the
`hf` loader), with tensor and pipeline parallelism across GPUs. What it cannot: llmpress's own
int8/int4 storage (the `quantized` loader), adapters that are not merged, ONNX exports — those are
refused with a message saying what to serve instead.

Verified here: the refusals (no vLLM, no GPU, unsupported artifacts) and the command line built.
NOT verified here (no GPU on this machine): vLLM actually serving; the command follows vLLM's
documented `vllm.entrypoints.openai.api_server` flags.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from llmpress.errors import ConfigError


@dataclass
class VllmConfig:
    """How to run vLLM on one machine (tensor_parallel x pipeline_parallel GPUs)."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    api_key: str | None = None  # vLLM checks one static key; llmpress keys/limits are not enforced there

    def __post_init__(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v!r}",
                                  f"pass --{name.replace('_', '-')} 1 or more", param=name)

    @property
    def gpus(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel


def check_available(cfg: VllmConfig) -> None:
    """Refuse, in one line, on a machine without vLLM or without enough CUDA GPUs."""
    fix = "run on a machine with NVIDIA GPUs and `pip install vllm`, or drop --backend vllm to use the llmpress engine"
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("--backend vllm needs vLLM and a CUDA GPU, and vLLM is not installed here", fix,
                          param="backend")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--backend vllm needs a CUDA GPU, and this machine has none", fix, param="backend")
    n = torch.cuda.device_count()
    if n < cfg.gpus:
        raise ConfigError(f"--tensor-parallel {cfg.tensor_parallel} x --pipeline-parallel {cfg.pipeline_parallel} "
                          f"needs {cfg.gpus} GPUs, this machine has {n}", "lower the parallel sizes",
                          param="tensor_parallel")


def check_artifact(art: Any) -> None:
    """vLLM loads plain HF directories; refuse llmpress-specific storage with what to do instead."""
    m = art.manifest
    if m.format != "hf":
        raise ConfigError(f"artifact {art.id} is a {m.format!r} export, which vLLM does not load",
                          "serve its parent HF artifact with --backend vllm", param="model")
    if m.loader == "quantized":
        scheme = m.step.params.get("scheme", "?")
        raise ConfigError(f"artifact {art.id} stores {scheme} weights in llmpress's own format, which vLLM cannot load",
                          f"serve its parent ({m.parent}) with vLLM (it quantizes on the GPU itself, e.g. --dtype "
                          "bfloat16), or serve this artifact with the llmpress engine (drop --backend vllm)",
                          param="model")
    if m.loader == "adapter":
        raise ConfigError(f"artifact {art.id} is an adapter on {m.parent}",
                          f"merge it first: `llmpress tune merge {art.id}`, then serve the merged artifact",
                          param="model")
    if m.loader != "hf":
        raise ConfigError(f"artifact {art.id} needs the llmpress loader {m.loader!r}, which vLLM does not have",
                          "serve it with the llmpress engine (drop --backend vllm)", param="model")


def command(cfg: VllmConfig, art: Any) -> list[str]:
    """vLLM's OpenAI-compatible server for this artifact (served under its name and its id)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(art.path),
           "--served-model-name", art.name, art.id, "--host", cfg.host, "--port", str(cfg.port),
           "--tensor-parallel-size", str(cfg.tensor_parallel), "--pipeline-parallel-size", str(cfg.pipeline_parallel),
           "--dtype", cfg.dtype, "--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if cfg.max_model_len:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.api_key:
        cmd += ["--api-key", cfg.api_key]
    return cmd


def serve(cfg: VllmConfig) -> int:
    """Check, then run vLLM's server in the foreground until it exits or we get SIGINT / SIGTERM."""
    from llmpress.sources import resolve

    check_available(cfg)
    art = resolve(cfg.model)
    check_artifact(art)
    proc = subprocess.Popen(command(cfg, art))

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
