"""PNG heatmaps and one self-contained HTML page for an explanation."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(tokens: list[str]) -> list[str]:
    return [t.replace("\n", "\\n")[:12] or "∅" for t in tokens]


def heatmap_grid(maps: Any, tokens: list[str], path: Path, layers: list[int], heads: list[int]) -> Path:
    """One heatmap per (layer, head): rows are query positions, columns the tokens attended to."""
    plt = _plt()
    nl, nh = len(layers), len(heads)
    size = max(2.2, min(4.0, 0.25 * len(tokens)))
    fig, axes = plt.subplots(nl, nh, figsize=(size * nh + 1, size * nl + 0.6), dpi=100, squeeze=False)
    labels = _short(tokens)
    show = len(tokens) <= 24
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            ax = axes[i][j]
            ax.imshow(maps[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks(range(len(tokens)) if show else [])
            ax.set_yticks(range(len(tokens)) if show else [])
            if show:
                ax.set_xticklabels(labels, rotation=90, fontsize=6)
                ax.set_yticklabels(labels, fontsize=6)
    fig.suptitle("attention weights (row: query token, column: attended token)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def rollout_plot(roll: Any, tokens: list[str], path: Path) -> Path:
    plt = _plt()
    n = len(tokens)
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * n + 2), max(3.5, 0.35 * n + 1.5)), dpi=100)
    im = ax.imshow(roll.numpy(), cmap="magma")
    labels = _short(tokens)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_title("attention rollout through all layers")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def attribution_plot(tokens: list[str], ig: list[float], gxi: list[float], target: str, path: Path) -> Path:
    plt = _plt()
    n = len(tokens)
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * n + 2), 3.6), dpi=100)
    x = list(range(n))
    ax.bar([i - 0.2 for i in x], ig, width=0.4, label="integrated gradients", color="tab:blue")
    ax.bar([i + 0.2 for i in x], gxi, width=0.4, label="gradient x input", color="tab:orange", alpha=0.8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(_short(tokens), rotation=90, fontsize=7)
    ax.set_ylabel("contribution to log p(next)")
    ax.set_title(f"which tokens made the model pick {target!r} next")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _token_spans(tokens: list[str], scores: list[float]) -> str:
    m = max((abs(s) for s in scores), default=0.0) or 1.0
    out = []
    for t, s in zip(tokens, scores, strict=True):
        a = min(1.0, abs(s) / m)
        color = f"rgba(220,40,40,{a:.2f})" if s > 0 else f"rgba(40,90,220,{a:.2f})"
        out.append(f'<span title="{s:+.4f}" style="background:{color};padding:1px 2px;border-radius:3px">'
                   f"{html.escape(t)}</span>")
    return "".join(out)


def write_html(path: Path, summary: dict[str, Any], tokens: list[str], ig: list[float], pngs: dict[str, Path]) -> Path:
    """A single HTML page (images inlined) so it can be mailed or attached as one file."""
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in summary.items())
    imgs = "\n".join(f"<h2>{html.escape(name)}</h2>{_img(p)}" for name, p in pngs.items())
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>llmpress explain</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}td{{padding:2px 8px;border-bottom:1px solid #ddd}}
.toks{{font-family:monospace;font-size:15px;line-height:2;white-space:pre-wrap}}</style></head>
<body><h1>llmpress explain</h1>
<table>{rows}</table>
<h2>Per-token attribution of the next-token choice (integrated gradients; red raises it, blue lowers it)</h2>
<div class="toks">{_token_spans(tokens, ig)}</div>
{imgs}
</body></html>
""", encoding="utf-8")
    return path
