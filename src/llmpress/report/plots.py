"""Plots: quality against speed with size as marker area, Pareto front optionally marked."""

from __future__ import annotations

import math
from pathlib import Path


def scatter(labels: list[str], x: list[float], y: list[float], sizes_mb: list[float], path: Path,
            xlabel: str, ylabel: str, title: str, front: list[int] | None = None,
            highlight: int | None = None, logy: bool | None = None) -> Path:
    """Write a PNG: one labelled point per model, marker area proportional to size on disk.

    `logy=None` picks a log y axis when the values span more than 2x (one bad recipe, e.g.
    int8-dynamic at +200 % perplexity, would otherwise squash all the others onto one line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    biggest = max(sizes_mb) if sizes_mb else 1.0
    areas = [60 + 1400 * (s / biggest) for s in sizes_mb]
    ax.scatter(x, y, s=areas, alpha=0.55, c=range(len(x)), cmap="viridis", edgecolors="black", linewidths=0.6)
    # Points close together (fp16 / bf16 / baseline sit on top of each other) get their labels
    # fanned out to different sides instead of printed over one another.
    if logy is None:
        logy = bool(y) and min(y) > 0 and max(y) / min(y) > 2.0
    offsets = [(8, 6), (8, -18), (-12, 16), (-12, -28), (24, 22), (24, -34)]
    span_x = (max(x) - min(x)) or 1.0 if x else 1.0
    ty = [math.log(v) if logy and v > 0 else v for v in y]
    span_y = (max(ty) - min(ty)) or 1.0 if ty else 1.0
    placed: list[tuple[float, float]] = []
    for i, label in enumerate(labels):
        px, py = (x[i] - min(x)) / span_x, (ty[i] - min(ty)) / span_y
        near = sum(1 for qx, qy in placed if abs(qx - px) < 0.08 and abs(qy - py) < 0.08)
        placed.append((px, py))
        dx, dy = offsets[near % len(offsets)]
        ax.annotate(f"{label}\n{sizes_mb[i]:.0f} MB", (x[i], y[i]), textcoords="offset points", xytext=(dx, dy),
                    fontsize=8, ha="left" if dx > 0 else "right",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "gray"} if near else None)
    if front:
        pts = sorted((x[i], y[i]) for i in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="crimson", lw=1.2, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    if highlight is not None:
        ax.scatter([x[highlight]], [y[highlight]], s=areas[highlight] * 1.6, facecolors="none",
                   edgecolors="crimson", linewidths=2.0, label="chosen")
    if logy:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
