"""Serving engine: continuous batching over a block-based, prefix-cached KV cache (nano-vllm's split).

`from llmpress.engine import LLM, SamplingParams` is the offline API; a server drives `LLMEngine`
from one thread (`llmpress.server.driver`) and reads its immutable `StepOutput`s.
"""

from llmpress.engine.config import EngineConfig
from llmpress.engine.llm_engine import LLMEngine
from llmpress.engine.offline import LLM
from llmpress.engine.outputs import RequestOutput, StepOutput
from llmpress.engine.sequence import SamplingParams, Sequence
from llmpress.errors import OverloadedError

__all__ = ["LLM", "LLMEngine", "EngineConfig", "OverloadedError", "RequestOutput", "SamplingParams", "Sequence",
           "StepOutput"]
