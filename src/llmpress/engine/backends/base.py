"""What every non-torch runtime model offers the evaluation code: a `RuntimeLM`.

ONNX Runtime (GenAI) and llama.cpp run the exported files themselves; `RuntimeLM` wraps
one so `evaluate.perplexity` (needs `model(input_ids=, attention_mask=).logits` over whole
windows) and `evaluate.speed` (needs a greedy decode of a [B, P] batch) measure it exactly
as they measure a torch model, on the same windows and prompts.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np


class RuntimeLM:
    """Base of runtime-backed causal LMs; subclasses implement `logits` and `greedy`."""

    runtime = "runtime"
    generation_config = None

    def __init__(self, path: Any, manifest: Any = None) -> None:
        self.path = path
        self.manifest = manifest

    # -- what subclasses implement ------------------------------------------------------
    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits [len(ids), vocab] of one unpadded sequence, computed in one pass."""
        raise NotImplementedError

    def greedy(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        """Greedy continuation of each prompt, exactly `new_tokens` tokens, EOS ignored."""
        raise NotImplementedError

    # -- the torch-model surface the evaluation code uses --------------------------------
    def eval(self) -> RuntimeLM:
        return self

    def __call__(self, input_ids: Any, attention_mask: Any = None, **_: Any) -> Any:
        """Batched forward for perplexity: each row runs unpadded; padded positions get zeros."""
        import torch

        rows = input_ids.tolist()
        lens = attention_mask.sum(-1).tolist() if attention_mask is not None else [len(r) for r in rows]
        out = None
        for i, (row, n) in enumerate(zip(rows, lens, strict=True)):
            lg = torch.from_numpy(np.ascontiguousarray(self.logits(row[: int(n)]), dtype=np.float32))
            if out is None:
                out = torch.zeros(len(rows), len(row), lg.shape[-1])
            out[i, : lg.shape[0]] = lg
        return SimpleNamespace(logits=out)

    def greedy_generate(self, ids: Any, n: int) -> Any:
        """(input_ids [B, P] tensor, n) -> generated ids [B, n] tensor; what `evaluate.speed` times."""
        import torch

        return torch.tensor(self.greedy(ids.tolist(), n), dtype=torch.long)

    def count_parameters(self) -> dict[str, int]:
        """The source model's logical parameter count, recorded at export time."""
        p = int(((self.manifest.extra if self.manifest else {}).get("export") or {}).get("params_count", 0))
        return {"params": p, "nonzero_params": p}
