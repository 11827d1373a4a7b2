"""GGUF exports run by llama.cpp (llama-cpp-python, the optional `[gguf]` extra), or, without it,
read by the `gguf` package through transformers' GGUF loader into a float32 torch model.

The fallback is a reference reader, not llama.cpp: it proves the file's tensors, metadata and
tokenizer decode to the source model (and measures quality exactly), while decode speed is
then torch's, not llama.cpp's — the result's `runtime` field says which one ran.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from llmpress.artifact import Artifact, register_loader
from llmpress.engine.backends.base import RuntimeLM
from llmpress.errors import ManifestError

GGUF_FILE = "model.gguf"


def have_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None and os.environ.get("LLMPRESS_NO_LLAMA_CPP") != "1"


class LlamaCppLM(RuntimeLM):
    """model.gguf in a llama-cpp-python `Llama` (one sequence at a time: its high-level API has no batch)."""

    runtime = "llama-cpp"

    def __init__(self, path: Path, manifest: Any = None, n_ctx: int = 2048, threads: int | None = None) -> None:
        super().__init__(path, manifest)
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path / GGUF_FILE), n_ctx=n_ctx, n_batch=512, logits_all=True,
                         verbose=False, n_threads=threads or os.cpu_count())

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        out = []
        for p in prompts:
            self.llm.reset()
            self.llm.eval(p)
            toks: list[int] = []
            for _ in range(new_tokens):
                nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
                toks.append(nxt)
                if len(toks) < new_tokens:
                    self.llm.eval([nxt])
            out.append(toks)
        return out


class GgufReaderLM(RuntimeLM):
    """model.gguf decoded by the `gguf` package (transformers' GGUF loader) into a float32 torch model."""

    runtime = "gguf-reader"

    def __init__(self, path: Path, manifest: Any = None) -> None:
        super().__init__(path, manifest)
        from llmpress.sources.gguf import load_gguf

        self.model, _ = load_gguf(path / GGUF_FILE)
        self.model.eval()

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()

    def greedy(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        import torch
        from transformers import DynamicCache

        out = []
        with torch.inference_mode():
            for p in prompts:
                res = self.model(input_ids=torch.tensor([p]), past_key_values=DynamicCache(), use_cache=True)
                toks = [int(res.logits[0, -1].argmax())]
                while len(toks) < new_tokens:
                    res = self.model(input_ids=torch.tensor([[toks[-1]]]), past_key_values=res.past_key_values,
                                     use_cache=True)
                    toks.append(int(res.logits[0, -1].argmax()))
                out.append(toks)
        return out


def load_gguf_runtime(path: Path, manifest: Any = None) -> RuntimeLM:
    """llama.cpp when llama-cpp-python is installed, else the gguf reference reader."""
    if not (path / GGUF_FILE).is_file():
        raise ManifestError(f"GGUF artifact {path} has no {GGUF_FILE}", "re-export it with `llmpress export`")
    return LlamaCppLM(path, manifest) if have_llama_cpp() else GgufReaderLM(path, manifest)


@register_loader("gguf")
def load_gguf_artifact(art: Artifact, **_: Any) -> RuntimeLM:
    """The `gguf` loader."""
    return load_gguf_runtime(art.path, art.manifest)
