"""ONNX exports run by ONNX Runtime: whole-window logits with an `InferenceSession`, greedy
decode with ONNX Runtime GenAI (the runtime an edge app embeds) or, for a Triton repository's
model file, with the same session and an explicit KV-cache loop.

The decoder written by ONNX Runtime GenAI's model builder takes `input_ids`, `attention_mask`
and `past_key_values.{i}.key|value` [B, kv_heads, past, head_dim] and returns `logits` and
`present.{i}.key|value`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmpress.artifact import Artifact, register_loader
from llmpress.engine.backends.base import RuntimeLM
from llmpress.errors import ConfigError, ManifestError

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bfloat16)": np.float32}


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"running an ONNX artifact needs the python package {module}, which is not installed",
                          "pip install 'llmpress[onnx]'") from e


class OrtSessionLM(RuntimeLM):
    """One ONNX decoder file in an `onnxruntime.InferenceSession`."""

    runtime = "onnxruntime"

    def __init__(self, model_file: Path, manifest: Any = None, threads: int | None = None) -> None:
        super().__init__(model_file.parent, manifest)
        ort = _need("onnxruntime")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")),
                                 key=lambda n: (int(n.split(".")[1]), n))
        kv = ((manifest.extra.get("export") or {}).get("kv") if manifest is not None else None) or {}
        if self.past_names and not kv:
            raise ManifestError(f"ONNX artifact {self.path} does not record its KV-cache shape",
                                "re-export it with `llmpress export`")
        self.kv_heads = int(kv.get("kv_heads", 0))
        self.head_dim = int(kv.get("head_dim", 0))
        self.kv_dtype = _NP.get(inputs[self.past_names[0]].type, np.float32) if self.past_names else np.float32
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), self.kv_dtype) for n in self.past_names}

    def _run(self, ids: np.ndarray, total: int, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((ids.shape[0], total), np.int64), **past}
        outs = self.session.run(["logits", *self.present_names], feed)
        return outs[0], dict(zip(self.past_names, outs[1:], strict=True))

    def logits(self, ids: list[int]) -> np.ndarray:
        out, _ = self._run(np.asarray([ids]), len(ids), self._empty_past(1))
        return out[0].astype(np.float32)

    def greedy(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        if len({len(p) for p in prompts}) != 1:
            return [self.greedy([p], new_tokens)[0] for p in prompts]
        ids = np.asarray(prompts, dtype=np.int64)
        total = ids.shape[1]
        logits, past = self._run(ids, total, self._empty_past(len(prompts)))
        toks = [logits[:, -1].argmax(-1)]
        for _ in range(new_tokens - 1):
            total += 1
            logits, past = self._run(toks[-1][:, None], total, past)
            toks.append(logits[:, -1].argmax(-1))
        return np.stack(toks, 1).astype(int).tolist()


class OrtGenAILM(OrtSessionLM):
    """An `onnx` artifact: greedy decode through ONNX Runtime GenAI, logits through ONNX Runtime."""

    runtime = "onnxruntime-genai"

    def __init__(self, path: Path, manifest: Any = None, threads: int | None = None) -> None:
        super().__init__(path / "model.onnx", manifest, threads)
        og = _need("onnxruntime_genai")
        self.og = og
        self.model = og.Model(str(path))

    def greedy(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        if len({len(p) for p in prompts}) != 1:
            return [self.greedy([p], new_tokens)[0] for p in prompts]
        og = self.og
        total = len(prompts[0]) + new_tokens
        params = og.GeneratorParams(self.model)
        # min_length holds EOS back, so every row yields exactly new_tokens tokens.
        params.set_search_options(max_length=total, min_length=total, do_sample=False, batch_size=len(prompts))
        gen = og.Generator(self.model, params)
        gen.append_tokens(np.asarray(prompts, dtype=np.int32))
        out: list[list[int]] = [[] for _ in prompts]
        for _ in range(new_tokens):
            gen.generate_next_token()
            for row, t in zip(out, gen.get_next_tokens().tolist(), strict=True):
                row.append(int(t))
        return out


@register_loader("onnx")
def load_onnx(art: Artifact, **_: Any) -> OrtGenAILM:
    """The `onnx` loader: the exported decoder in ONNX Runtime GenAI."""
    return OrtGenAILM(art.path, art.manifest)


@register_loader("triton")
def load_triton(art: Artifact, **_: Any) -> OrtSessionLM:
    """The `triton` loader: the repository's model file in ONNX Runtime (what Triton's onnxruntime backend runs)."""
    files = sorted(art.path.glob("*/[0-9]*/model.onnx"))
    if not files:
        raise ManifestError(f"Triton repository {art.path} has no <model>/<version>/model.onnx",
                            "re-export it with `llmpress export --format triton`")
    return OrtSessionLM(files[-1], art.manifest)
