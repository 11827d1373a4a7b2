"""The Pareto front and the targets it is taken over (a leaf module).

`plan` chooses candidates with it and `report` draws it; keeping it here means report never
imports plan (and plan never reaches into report for a computation).
"""

from __future__ import annotations

TARGETS = {
    # target -> (metric key in a Candidate, higher is better)
    "latency": ("b1_tok_s", True),
    "throughput": ("b32_tok_s", True),
    "memory": ("peak_rss_mb", False),
}


def pareto_front(points: list[tuple[float, float]], higher_x: bool = True, lower_y: bool = True) -> list[int]:
    """Indices of points not dominated by any other (better or equal on both axes, better on one)."""
    def better(a: tuple[float, float], b: tuple[float, float]) -> bool:
        ax, ay = (a[0] if higher_x else -a[0]), (-a[1] if lower_y else a[1])
        bx, by = (b[0] if higher_x else -b[0]), (-b[1] if lower_y else b[1])
        return ax >= bx and ay >= by and (ax > bx or ay > by)

    return [i for i, p in enumerate(points) if not any(better(q, p) for j, q in enumerate(points) if j != i)]
