"""Student initialisation: a layer subset of the teacher (DistilBERT-style), a smaller config, or
any existing artifact (e.g. a pruned one, passed to `distill` directly)."""

from __future__ import annotations

import copy
from typing import Any

from llmpress.compress.decoder import decoder_layers, keep_layers
from llmpress.errors import ConfigError


def spread_indices(total: int, n: int) -> list[int]:
    """`n` layer indices spread evenly over `total`, starting at 0 (n = total/2 gives every other layer)."""
    if not 1 <= n <= total:
        raise ConfigError(f"a student with {n} layers cannot be cut from a teacher with {total}",
                          f"pass --student-layers between 1 and {total}")
    return sorted({int(i * total / n) for i in range(n)})


def layer_subset(teacher: Any, n_layers: int | None = None, indices: list[int] | None = None) -> Any:
    """A copy of the teacher keeping `indices` (default: every other layer, or `n_layers` spread evenly)."""
    total = len(decoder_layers(teacher))
    if indices is None:
        indices = spread_indices(total, n_layers if n_layers is not None else max(1, total // 2))
    student = keep_layers(teacher, indices)
    student.config.llmpress_student_layers = list(indices)  # provenance, harmless for from_pretrained
    return student


def from_config(teacher: Any, **overrides: Any) -> Any:
    """A randomly initialised model of the teacher's class with config fields overridden
    (e.g. num_hidden_layers=4, intermediate_size=768). Vocabulary stays the teacher's."""
    import torch

    cfg = copy.deepcopy(teacher.config)
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ConfigError(f"the teacher's config has no field {k!r}", "use a field of its config.json")
        setattr(cfg, k, v)
    if "num_attention_heads" in overrides and "head_dim" not in overrides and hasattr(cfg, "head_dim"):
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    torch.manual_seed(0)
    return type(teacher)(cfg).to(next(teacher.parameters()).dtype).eval()


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when two tokenizers map every token string to the same id."""
    return type(a).__name__ == type(b).__name__ and a.get_vocab() == b.get_vocab()
