"""Size: logical parameter count, nonzero parameters, bytes on disk."""

from __future__ import annotations

from typing import Any


def count_parameters(model: Any) -> dict[str, int]:
    """Logical parameters and how many are nonzero (`llmpress.modelstats.count_parameters`)."""
    from llmpress.modelstats import count_parameters as count

    if hasattr(model, "count_parameters"):  # an exported model in its own runtime: counted at export
        return model.count_parameters()
    c = count(model)
    return {"params": c["params"], "nonzero_params": c["nonzero_params"]}
