"""Explain: what a model attends to and which prompt tokens drove its next-token choice.

`explain(ExplainConfig(model, prompt))` writes attention heatmaps per layer/head, the attention
rollout, per-token attributions (integrated gradients and gradient x input) as PNGs, one HTML page
with all of it, and explain.json. Any artifact that runs eagerly works; quantized ones through
their dequantized reference path (see `explain.model`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmpress.errors import ConfigError

__all__ = ["ExplainConfig", "ExplainResult", "explain"]


@dataclass
class ExplainConfig:
    model: str
    prompt: str
    layer: int | None = None  # None: every layer
    head: int | None = None  # None: every head
    out_dir: Path | None = None
    ig_steps: int = 32
    max_tokens: int = 64  # longest prompt explained (tokens); longer ones are refused, not cut silently

    def validate(self) -> ExplainConfig:
        if not self.prompt or not self.prompt.strip():
            raise ConfigError("--prompt is empty", "pass the text to explain, e.g. --prompt 'The capital of France is'")
        if self.ig_steps < 2:
            raise ConfigError(f"--ig-steps {self.ig_steps} is too few", "use 16 or more")
        return self


@dataclass
class ExplainResult:
    model: str
    artifact_id: str
    tokens: list[str]
    next_token: str
    next_token_prob: float
    layers: list[int]
    heads: list[int]
    integrated_gradients: list[float]
    ig_completeness_error: float  # sum(IG) - ig_delta: small when the path integral has converged
    ig_delta: float  # log p(next | prompt) - log p(next | baseline)
    gradient_x_input: list[float]
    rollout_last_row: list[float]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        return d


def _pick(value: int | None, n: int, what: str) -> list[int]:
    if value is None:
        return list(range(n))
    if not 0 <= value < n:
        raise ConfigError(f"--{what} {value} does not exist: the model has {n} {what}s (0..{n - 1})",
                          f"pass --{what} between 0 and {n - 1}")
    return [value]


def explain(config: ExplainConfig) -> ExplainResult:
    """Run the model once for attentions, IG for attributions; write PNGs, HTML and JSON atomically."""
    import torch

    from llmpress.explain.attention import attention_maps, attention_rollout
    from llmpress.explain.attribution import gradient_x_input, integrated_gradients, reference_token
    from llmpress.explain.model import load_eager
    from llmpress.explain.render import attribution_plot, heatmap_grid, rollout_plot, write_html
    from llmpress.sources import resolve

    cfg = config.validate()
    art = resolve(cfg.model)
    model, tok, notes = load_eager(art)
    ids = tok(cfg.prompt, return_tensors="pt")["input_ids"]
    if tok.bos_token_id is not None and (ids.shape[1] == 0 or int(ids[0, 0]) != tok.bos_token_id):
        ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], dim=1)
    if ids.shape[1] > cfg.max_tokens:
        raise ConfigError(f"the prompt is {ids.shape[1]} tokens; explain draws one heatmap cell per token pair",
                          f"shorten it to at most {cfg.max_tokens} tokens")
    n_layers = int(model.config.num_hidden_layers)
    n_heads = int(model.config.num_attention_heads)
    layers, heads = _pick(cfg.layer, n_layers, "layer"), _pick(cfg.head, n_heads, "head")
    tokens = [tok.decode([int(i)]) for i in ids[0]]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    target = int(probs.argmax())
    maps = attention_maps(model, ids)
    roll = attention_rollout(maps)
    ref = reference_token(model, tok, ids)
    keep_first = tok.bos_token_id is not None and int(ids[0, 0]) == tok.bos_token_id
    ig = integrated_gradients(model, ids, target, ref, keep_first, cfg.ig_steps)
    gxi = gradient_x_input(model, ids, target)
    next_tok = tok.decode([target])

    out = Path(cfg.out_dir) if cfg.out_dir else Path("reports") / ("explain-" + datetime.now(UTC).strftime(
        "%Y%m%d-%H%M%S"))
    if out.exists() and not (out / "explain.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an explain report", "pass a new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".explain-", dir=out.parent))
    os.chmod(tmp, 0o755)
    try:
        pngs = {"attention heatmaps": heatmap_grid(maps, tokens, tmp / "attention.png", layers, heads),
                "attention rollout": rollout_plot(roll, tokens, tmp / "rollout.png"),
                "attribution": attribution_plot(tokens, ig["scores"], gxi, next_tok, tmp / "attribution.png")}
        summary = {"model": f"{art.name} ({art.id})", "prompt tokens": len(tokens),
                   "next token (greedy)": f"{next_tok!r} p={float(probs[target]):.3f}",
                   "layers shown": ", ".join(map(str, layers)), "heads shown": ", ".join(map(str, heads)),
                   "IG steps / completeness error": f"{cfg.ig_steps} / {ig['error']:+.4f} "
                                                    f"(of Δ log p {ig['delta']:+.4f})",
                   "IG baseline": f"every token -> {tok.decode([ref])!r}" + (" (BOS kept)" if keep_first else ""),
                   **{k: v for k, v in notes.items()}}
        write_html(tmp / "explain.html", summary, tokens, ig["scores"], pngs)
        res = ExplainResult(cfg.model, art.id, tokens, next_tok, float(probs[target]), layers, heads, ig["scores"],
                            ig["error"], ig["delta"], gxi, roll[-1].tolist(), out, notes=notes)
        (tmp / "explain.json").write_text(json.dumps(res.to_dict(), indent=2, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res.files = {"html": out / "explain.html", "attention": out / "attention.png", "rollout": out / "rollout.png",
                 "attribution": out / "attribution.png", "json": out / "explain.json"}
    return res
