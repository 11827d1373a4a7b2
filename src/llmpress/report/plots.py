"""Plots: quality against speed with size as marker area, Pareto front optionally marked."""

from __future__ import annotations

from pathlib import Path


def pareto_front(points: list[tuple[float, float]], higher_x: bool = True, lower_y: bool = True) -> list[int]:
    """Indices of points not dominated by any other (better or equal on both axes, better on one)."""
    def better(a: tuple[float, float], b: tuple[float, float]) -> bool:
        ax, ay = (a[0] if higher_x else -a[0]), (-a[1] if lower_y else a[1])
        bx, by = (b[0] if higher_x else -b[0]), (-b[1] if lower_y else b[1])
        return ax >= bx and ay >= by and (ax > bx or ay > by)

    return [i for i, p in enumerate(points) if not any(better(q, p) for j, q in enumerate(points) if j != i)]


def scatter(labels: list[str], x: list[float], y: list[float], sizes_mb: list[float], path: Path,
            xlabel: str, ylabel: str, title: str, front: list[int] | None = None,
            highlight: int | None = None, logy: bool = False) -> Path:
    """Write a PNG: one labelled point per model, marker area proportional to size on disk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    biggest = max(sizes_mb) if sizes_mb else 1.0
    areas = [60 + 1400 * (s / biggest) for s in sizes_mb]
    ax.scatter(x, y, s=areas, alpha=0.55, c=range(len(x)), cmap="viridis", edgecolors="black", linewidths=0.6)
    for i, label in enumerate(labels):
        ax.annotate(f"{label}\n{sizes_mb[i]:.0f} MB", (x[i], y[i]), textcoords="offset points", xytext=(8, 6),
                    fontsize=8)
    if front:
        pts = sorted((x[i], y[i]) for i in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="crimson", lw=1.2, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    if highlight is not None:
        ax.scatter([x[highlight]], [y[highlight]], s=areas[highlight] * 1.6, facecolors="none",
                   edgecolors="crimson", linewidths=2.0, label="chosen")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
