"""The tune step: base artifact + data + method -> new artifact with its training record.

Adapter methods write a PEFT adapter artifact (format "adapter", parent = base); full
fine-tuning writes a standalone hf artifact. Both record trainable parameters, peak RSS,
steps/s, loss curves (PNG in the artifact) and eval metrics before/after.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from llmpress.artifact import Artifact, Step, create_artifact, home
from llmpress.data.finetune import FinetuneData, classification_prompt_ids, load_finetune_data
from llmpress.errors import ConfigError
from llmpress.modelstats import count_parameters
from llmpress.tune import get_method
from llmpress.tune.config import TrainConfig, config_from_dict

CURVES_PNG = "loss_curves.png"


def runs_dir() -> Path:
    d = home() / "tune-runs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_key(base: Artifact, method: str, method_params: dict[str, Any], train: TrainConfig, data: str) -> str:
    """Same base, method, settings and data -> same run directory, which is how --resume finds it."""
    data_id = data
    p = Path(data).expanduser()
    if p.is_file():
        st = p.stat()
        data_id = f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    blob = json.dumps([base.id, method, method_params, asdict(train), data_id], sort_keys=True, default=str)
    return f"{method}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def classification_accuracy(model: Any, tokenizer: Any, data: FinetuneData, seq_len: int) -> float | None:
    """Share of eval records whose true label has the highest total log-likelihood among all labels."""
    if data.kind != "classification" or not data.eval_records:
        return None
    import torch

    label_ids = {lab: tokenizer(" " + lab, add_special_tokens=False)["input_ids"] for lab in data.label_set}
    correct = 0
    model.eval()
    with torch.no_grad():
        for rec in data.eval_records:
            scores = {}
            for lab, ids in label_ids.items():
                prompt = classification_prompt_ids(tokenizer, rec["text"], seq_len - len(ids) - 1)
                x = torch.tensor([prompt + ids])
                logp = torch.log_softmax(model(input_ids=x).logits[0, -len(ids) - 1 : -1].float(), -1)
                scores[lab] = float(logp.gather(1, torch.tensor(ids)[:, None]).sum())
            correct += max(scores, key=scores.__getitem__) == str(rec["label"])
    return correct / len(data.eval_records)


def load_trainable_base(base: Artifact) -> Any:
    """The base as a plain float32 model (an adapter base is merged first, so methods stack)."""
    import torch

    from llmpress.tune.adapters import plain_model

    model = plain_model(base.load_model(dtype=torch.float32))
    model.config.use_cache = False
    return model


def tune_artifact(base: Artifact, method: str, data: str, method_params: dict[str, Any] | None = None,
                  train: TrainConfig | None = None, name: str | None = None, resume: bool = False,
                  progress: Any = None, extra_callbacks: list[Any] | None = None) -> Artifact | None:
    """Fine-tune `base` with `method` on `data`; returns the registered new artifact (None on ranks > 0)."""
    import torch

    from llmpress.tune.trainer import plot_curves, run_training

    m = get_method(method)
    cfg = config_from_dict(m.config, dict(method_params or {}))
    train = train or TrainConfig()
    train.validate()
    params = asdict(cfg)
    lr = train.lr if train.lr is not None else params.pop("default_lr")
    params.pop("default_lr", None)
    torch.manual_seed(train.seed)
    tokenizer = base.load_tokenizer()
    ft = load_finetune_data(data, tokenizer, train.seq_len, train.task, train.max_train, train.max_eval)
    model = load_trainable_base(base)
    acc_before = classification_accuracy(model, tokenizer, ft, train.seq_len)
    model = m.prepare(model, cfg, str(base.path))
    counts = count_parameters(model, nonzero=False)
    trainable, total = counts["trainable_params"], counts["params"]
    run_dir = runs_dir() / run_key(base, method, params, train, data)
    result = run_training(model, tokenizer, ft, train, lr, run_dir, resume=resume, progress=progress,
                          extra_callbacks=extra_callbacks)
    acc_after = classification_accuracy(model, tokenizer, ft, train.seq_len)

    metrics: dict[str, Any] = {
        "method": method, "trainable_params": trainable, "total_params": total,
        "trainable_pct": round(100.0 * trainable / total, 4), "steps": result.steps,
        "steps_per_s": round(result.steps_per_s, 4), "train_seconds": round(result.step_seconds, 2),
        "peak_rss_mb": round(result.peak_rss_bytes / 2**20, 1),
        "process_max_rss_mb": round(result.process_max_rss_bytes / 2**20, 1),
        "eval_loss_before": round(result.eval_loss_before, 5), "eval_loss_after": round(result.eval_loss_after, 5),
        "eval_ppl_before": round(math.exp(min(result.eval_loss_before, 50)), 4),
        "eval_ppl_after": round(math.exp(min(result.eval_loss_after, 50)), 4),
        "train_curve": result.train_curve, "eval_curve": result.eval_curve, "bf16": result.bf16, "lr": lr,
        **ft.summary(),
    }
    if acc_before is not None:
        metrics.update(accuracy_before=acc_before, accuracy_after=acc_after)
    from llmpress.tune.trainer import is_main_process, world_size

    if world_size() > 1:
        metrics.update(processes=world_size(), global_batch=train.batch_size * train.grad_accum * world_size())
        if not is_main_process():  # data-parallel: every rank holds the same weights; rank 0 writes the one artifact
            return None
    step = Step("tune", {"method": method, **params, "lr": lr, "data": data,
                         "train": {k: v for k, v in asdict(train).items() if k != "lr"}})
    from llmpress.tune.adapters import base_fingerprint

    with create_artifact(name or f"{base.name}-{method}", step, parent=base,
                         format="adapter" if m.produces_adapter else "hf",
                         loader="adapter" if m.produces_adapter else "hf") as w:
        if m.produces_adapter:
            model.save_pretrained(str(w.path))
            tokenizer.save_pretrained(str(w.path))
        else:
            from llmpress.sources.hf import save_model

            model.config.use_cache = True
            if train.gradient_checkpointing:
                model.gradient_checkpointing_disable()
            save_model(model, tokenizer, w.path)
        plot_curves(result, w.path / CURVES_PNG, f"{base.name} · {method} · {result.steps} steps")
        w.manifest.extra["base"] = base_fingerprint(base)
        w.manifest.extra["tune"] = {"method": method, "mergeable": m.mergeable, "curves": CURVES_PNG}
    art = w.artifact
    assert art is not None
    art.record_metrics("tune", metrics)
    shutil.rmtree(run_dir, ignore_errors=True)  # the run finished: its resume checkpoints are obsolete
    return art


def parse_method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Keep only the options that belong to `method` (the CLI passes every flag)."""
    m = get_method(method)
    from dataclasses import fields

    names = {f.name for f in fields(m.config)}
    out = {k: v for k, v in options.items() if k in names and v is not None}
    bad = [k for k, v in options.items() if v is not None and k not in names]
    if bad:
        raise ConfigError(f"option(s) {', '.join('--' + b.replace('_', '-') for b in bad)} do not apply to {method}",
                          f"{method} takes: {', '.join(sorted(n for n in names if n != 'default_lr'))}")
    return out
