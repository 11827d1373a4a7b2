"""ONNX exports run by ONNX Runtime: whole-window logits with an `InferenceSession`, greedy
decode with ONNX Runtime GenAI (the runtime an edge app embeds) or, for a Triton repository's
model file, with the same session and an explicit KV-cache loop.

The decoder written by ONNX Runtime GenAI's model builder takes `input_ids`, `attention_mask`
and `past_key_values.{i}.key|value` [B, kv_heads, past, head_dim] and returns `logits` and
`present.{i}.key|value`.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from llmpress.artifact import Artifact, register_loader
from llmpress.engine.backends.base import RuntimeLM
from llmpress.engine.intake import RequestIntake
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
        if len(prompts) > 1:
            # A batch: ONNX Runtime GenAI's own greedy search (it appends tokens only once per batched
            # generator); min_length holds EOS back so every row yields exactly new_tokens tokens.
            params.set_search_options(max_length=total, min_length=total, do_sample=False, batch_size=len(prompts))
            gen = og.Generator(self.model, params)
            gen.append_tokens(np.asarray(prompts, dtype=np.int32))
            rows: list[list[int]] = [[] for _ in prompts]
            for _ in range(new_tokens):
                gen.generate_next_token()
                for row, t in zip(rows, gen.get_next_tokens().tolist(), strict=True):
                    row.append(int(t))
            return rows
        # One sequence: the argmax is taken here and fed back with append_tokens, so EOS is a token like
        # any other (chosen when it wins, then decoding goes on), exactly as llmpress's torch loops do.
        params.set_search_options(max_length=total, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.append_tokens(np.asarray(prompts, dtype=np.int32))
        out: list[int] = []
        for i in range(new_tokens):
            out.append(int(np.asarray(gen.get_logits()).reshape(-1).argmax()))
            if i + 1 < new_tokens:
                gen.append_tokens(np.asarray([[out[-1]]], dtype=np.int32))
        return [out]


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


class OrtGenAIEngine(RequestIntake):
    """The serving surface of `LLMEngine` over ONNX Runtime GenAI, for `llmpress serve` of an onnx artifact.

    Each request owns one `og.Generator` (its own KV cache inside ONNX Runtime GenAI); a step
    advances every running request by one token: the runtime computes the logits, llmpress's own
    sampler picks the token (so temperature, top-p/k, penalties, seeds, stop strings and logprobs
    behave as in the torch engine), and the token is appended to the generator. ONNX Runtime
    GenAI's Python API batches only requests that start together, so requests run side by side
    (interleaved, one forward each per step), not fused into one batched forward.
    """

    def __init__(self, artifact: Artifact, max_batch: int = 8, max_waiting: int = 256) -> None:
        from collections import deque

        self.lm = OrtGenAILM(artifact.path, artifact.manifest)
        self.og = self.lm.og
        self._init_intake(artifact.load_tokenizer(), max_waiting)
        genai = __import__("json").loads((artifact.path / "genai_config.json").read_text())
        self.max_model_len = int(genai["model"].get("context_length") or 2048)
        self.vocab_size = int(genai["model"].get("vocab_size") or 0)
        self.max_batch = max_batch
        eos = genai["model"].get("eos_token_id")
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(int(self.tokenizer.eos_token_id))
        self.waiting: deque[Any] = deque()
        self.running: list[Any] = []
        self._gens: dict[int, Any] = {}  # ONNX Runtime failures fail their request alone: never unhealthy

    # -- requests (the same contract as LLMEngine; add / abort are RequestIntake's) -------
    def make_sequence(self, prompt_ids: list[int], params: Any, request_id: str | None = None) -> Any:
        from llmpress.engine.model_runner import check_context
        from llmpress.engine.sequence import Sequence

        self.check_prompt(prompt_ids, self.vocab_size)
        if params.prompt_logprobs is not None:
            raise ConfigError("prompt logprobs (echo scoring) are not available with ONNX Runtime GenAI",
                              "serve the hf parent of this export for scoring", param="prompt_logprobs")
        check_context(len(prompt_ids), params.max_tokens, self.max_model_len)
        return Sequence(prompt_ids, params, request_id)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # -- the queue behind RequestIntake ----------------------------------------------------
    def _enqueue(self, seq: Any) -> None:
        self.waiting.append(seq)

    def _queued(self) -> int:
        return len(self.waiting)

    def _live(self) -> Iterable[Any]:
        return chain(self.running, self.waiting)

    def _finish(self, seq: Any, reason: str, error: str | None = None) -> None:
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self._gens.pop(seq.seq_id, None)
        seq.error = error
        seq.finish(reason)

    # -- the step ------------------------------------------------------------------------
    def step(self) -> list[Any]:
        """Admit, then advance every running request by one token; returns immutable `StepOutput`s."""
        from llmpress.engine.llm_engine import publish

        return publish(self._step())

    def _step(self) -> list[Any]:
        import time

        import torch

        from llmpress.engine.sampler import sample, top_logprobs
        from llmpress.engine.sequence import SequenceStatus

        touched: list[Any] = self._admit()
        while self.waiting and len(self.running) < self.max_batch:
            seq = self.waiting.popleft()
            params = self.og.GeneratorParams(self.lm.model)
            params.set_search_options(max_length=len(seq) + seq.params.max_tokens, do_sample=False)
            gen = self.og.Generator(self.lm.model, params)
            try:
                gen.append_tokens(np.asarray([seq.token_ids], dtype=np.int32))
            except Exception as e:  # noqa: BLE001 - a runtime failure fails this request only
                seq.error = f"{e.__class__.__name__}: {e}"
                seq.finish("error")
                touched.append(seq)
                continue
            seq.status = SequenceStatus.RUNNING
            seq.num_computed = len(seq)
            self._gens[seq.seq_id] = gen
            self.running.append(seq)
        if not self.running:
            return touched
        self.steps += 1
        seqs = list(self.running)
        logits = torch.from_numpy(np.stack([np.asarray(self._gens[s.seq_id].get_logits(), np.float32).reshape(-1)
                                            for s in seqs]))
        tokens = sample(logits.clone(), seqs)
        now = time.perf_counter()
        for i, seq in enumerate(seqs):
            tok = int(tokens[i])
            p = seq.params
            seq.token_ids.append(tok)
            self.tokens_out += 1
            if p.logprobs is not None:
                r = top_logprobs(logits[i:i + 1], [tok], p.logprobs)[0]
                seq.logprobs.append(r)
            if seq.first_token_time is None:
                seq.first_token_time = now
            reason = None
            if (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids:
                reason = "stop"
            elif seq.detok.add(tok):  # a stop string: the text is already cut before it
                reason = "stop"
            if reason is None and seq.num_output_tokens >= p.max_tokens:
                reason = "length"
            if reason:
                self._finish(seq, reason)
            else:
                self._gens[seq.seq_id].append_tokens(np.asarray([[tok]], dtype=np.int32))
                seq.num_computed = len(seq)
            touched.append(seq)
        return touched
