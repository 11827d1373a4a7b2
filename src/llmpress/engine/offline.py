"""Offline batch API: `LLM(artifact).generate(prompts, SamplingParams(...))`, vLLM's shape."""

from __future__ import annotations

from typing import Any

from llmpress.engine.config import EngineConfig
from llmpress.engine.llm_engine import LLMEngine
from llmpress.engine.outputs import RequestOutput, StepOutput
from llmpress.engine.sequence import SamplingParams, Sequence


class LLM:
    """Offline batch API: `LLM(artifact, **engine_config).generate(prompts, SamplingParams(...))`."""

    def __init__(self, artifact: Any, **config: Any) -> None:
        if isinstance(artifact, str):
            from llmpress.sources import resolve

            artifact = resolve(artifact)
        self.artifact = artifact
        self.engine = LLMEngine.from_artifact(artifact, **config)
        self.tokenizer = self.engine.tokenizer

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **config: Any) -> LLM:
        """The offline API over an already-loaded model (used by `evaluate.speed`)."""
        self = cls.__new__(cls)
        self.artifact = None
        self.engine = LLMEngine(model, tokenizer, EngineConfig(**config))
        self.tokenizer = tokenizer
        return self

    def generate(self, prompts: list[list[int]] | list[str], params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool = False) -> list[RequestOutput]:
        """Run all prompts (token-id lists or strings) to completion with continuous batching; outputs in input order."""
        params = params or SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(prompts)
        seqs: list[Sequence] = []
        for i, (pr, sp) in enumerate(zip(prompts, plist, strict=True)):
            ids = self.tokenizer.encode(pr) if isinstance(pr, str) else list(pr)
            seq = self.engine.make_sequence(ids, sp, str(i))
            seqs.append(seq)
        eng = self.engine
        with eng.lock:  # offline: no queue bound
            eng._inbox.extend(seqs)
        outs: dict[int, list[StepOutput]] = {s.seq_id: [] for s in seqs}
        while eng.has_work():
            for o in eng.step():
                outs[o.seq_id].append(o)
        result = []
        for s in seqs:
            got = outs[s.seq_id]
            last = got[-1] if got else None
            result.append(RequestOutput(
                s.request_id, s.token_ids[:s.num_prompt_tokens], [t for o in got for t in o.token_ids],
                "".join(o.text for o in got), last.finish_reason if last else s.finish_reason,
                last.ttft if last else None, last.latency if last else None,
                [e for o in got for e in o.logprobs], [e for o in got for e in o.prompt_logprobs],
                s.num_cached_prefix))
        return result
