"""Optional recovery after structured / layer pruning: a short distillation from the parent.

The parent (unpruned) is the teacher, the pruned model the student, on causal-LM windows of
the corpus's train split; alpha 0.5 mixes next-token CE with the parent's soft targets.
"""

from __future__ import annotations

from typing import Any

from llmpress.compress.distill import lm_dataset
from llmpress.compress.distill.trainer import train


def recover(student: Any, teacher: Any, tokenizer: Any, data: str, steps: int, batch_size: int = 4,
            seq_len: int = 256, lr: float = 5e-5, progress: Any = None) -> dict[str, Any]:
    """Distil `teacher` into `student` in place for `steps` optimizer steps; returns the training stats."""
    from llmpress.data import load_corpus

    corpus = load_corpus(data)
    ds = lm_dataset(tokenizer, corpus.train, seq_len, steps * batch_size)
    stats = train(student, ds, task="causal-lm", pad_id=tokenizer.pad_token_id, teacher=teacher, alpha=0.5,
                  temperature=2.0, max_steps=steps, batch_size=batch_size, lr=lr, progress=progress,
                  description="recovery (distil from parent)")
    return {**stats, "windows": len(ds), "seq_len": seq_len, "batch_size": batch_size, "lr": lr}
