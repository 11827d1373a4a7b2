"""Evaluation: quality (perplexity, bits/byte), speed (TTFT, decode tok/s, RSS) and size.

`evaluate_artifact` is the step `Artifact -> Report`: it measures, stores the results on
the artifact's manifest and in the registry's evaluations table, and returns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmpress.artifact import Artifact
from llmpress.evaluate.quality import perplexity
from llmpress.evaluate.size import count_parameters
from llmpress.evaluate.speed import SpeedConfig, measure_in_subprocess, measure_speed

__all__ = ["EvalConfig", "SpeedConfig", "evaluate_artifact", "perplexity", "count_parameters", "measure_speed",
           "measure_in_subprocess", "quality_delta"]


@dataclass
class EvalConfig:
    data: str = "builtin:pydoc"
    text_field: str = "text"
    window: int = 512
    stride: int = 256
    max_tokens: int | None = None
    quality: bool = True
    speed: bool = True
    size: bool = True
    speed_config: SpeedConfig = field(default_factory=SpeedConfig)
    # a task file / builtin:NAME / lm-eval:TASK scored on the same loaded model (see evaluate.task)
    task: str | None = None
    task_limit: int | None = None


def quality_delta(ppl: float, parent_ppl: float) -> float:
    """Relative perplexity change in percent (positive = worse)."""
    return (ppl / parent_ppl - 1.0) * 100.0


def _parent_quality(art: Artifact, cfg: EvalConfig) -> dict[str, Any] | None:
    if not art.manifest.parent:
        return None
    from llmpress.errors import LlmpressError
    from llmpress.registry import get_registry

    try:
        q = get_registry().get(art.manifest.parent).metrics.get("quality") or {}
    except LlmpressError:
        return None
    same = q.get("data") == cfg.data and q.get("window") == cfg.window and q.get("stride") == cfg.stride \
        and q.get("max_tokens") == cfg.max_tokens
    return q if same and "perplexity" in q else None


def evaluate_artifact(art: Artifact, config: EvalConfig | None = None, progress: Any = None,
                      model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Measure an artifact and record the results (manifest + registry). Returns {section: metrics}."""
    from llmpress.data import load_corpus
    from llmpress.registry import get_registry

    cfg = config or EvalConfig()
    results: dict[str, Any] = {}
    reg = get_registry()
    task = None
    if cfg.quality or cfg.size or cfg.task:
        texts = load_corpus(cfg.data, cfg.text_field).split("eval") if cfg.quality else []
        if model is None:
            model = art.load_model()
        if tokenizer is None:
            tokenizer = art.load_tokenizer()
        if cfg.quality:
            if progress is not None:
                task = progress.add_task(f"{art.name}: perplexity", total=None)

            def on_q(done: int, total: int) -> None:
                if progress is not None:
                    progress.update(task, completed=done, total=total)

            q = perplexity(model, tokenizer, texts, cfg.window, cfg.stride, cfg.max_tokens, on_progress=on_q)
            q.update(data=cfg.data, max_tokens=cfg.max_tokens)
            parent_q = _parent_quality(art, cfg)
            if parent_q:
                q["parent_perplexity"] = parent_q["perplexity"]
                q["delta_ppl_pct"] = quality_delta(q["perplexity"], parent_q["perplexity"])
            results["quality"] = q
        if cfg.task:
            results["task"] = _run_task(model, tokenizer, art, cfg, progress)
        if cfg.size:
            results["size"] = {**count_parameters(model), "bytes_on_disk": art.bytes_on_disk()}
            results["size"]["mb_on_disk"] = results["size"]["bytes_on_disk"] / 1e6
        del model
    if cfg.speed:
        if progress is not None:
            task = progress.add_task(f"{art.name}: speed ({cfg.speed_config.runner})", total=None)

        def on_s(done: int, total: int, desc: str) -> None:
            if progress is not None:
                progress.update(task, completed=done, total=total,
                                description=f"{art.name}: speed {desc}")

        results["speed"] = measure_in_subprocess(art.path, cfg.speed_config, on_s)
    for section, values in results.items():
        art.record_metrics(section, values)
        dataset = cfg.data if section == "quality" else (cfg.task if section == "task" else "-")
        reg.add_evaluation(art, dataset or "-", section, values)
    return results


def _run_task(model: Any, tokenizer: Any, art: Artifact, cfg: EvalConfig, progress: Any) -> dict[str, Any]:
    from llmpress.evaluate.task import TaskConfig, run_task

    task = progress.add_task(f"{art.name}: task {cfg.task}", total=None) if progress is not None else None

    def on_t(done: int, total: int) -> None:
        if progress is not None:
            progress.update(task, completed=done, total=total)

    return run_task(model, tokenizer, TaskConfig(str(cfg.task), limit=cfg.task_limit), on_progress=on_t)
