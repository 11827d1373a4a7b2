"""Serving engine: continuous batching over a block-based, prefix-cached KV cache (nano-vllm's split).

`from llmpress.engine import LLM, SamplingParams` is the offline API; the server drives `LLMEngine`
through `EngineThread`.
"""

from llmpress.engine.llm_engine import (
           LLM,
           EngineConfig,
           EngineThread,
           LLMEngine,
           OverloadedError,
           RequestOutput,
)
from llmpress.engine.sequence import SamplingParams, Sequence

__all__ = ["LLM", "LLMEngine", "EngineConfig", "EngineThread", "OverloadedError", "RequestOutput",
           "SamplingParams", "Sequence"]
