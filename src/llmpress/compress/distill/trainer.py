"""Distillation on the Hugging Face Trainer: the seeds' DistillationTrainingArguments /
DistillationTrainer idea, with the teacher frozen in eval mode under no_grad, optional cached
teacher logits (compute the teacher once, reuse every epoch), and rich progress.

bf16 autocast is on by default where the CPU has AMX or AVX512-BF16 (`hardware.cpu_has_bf16`): the
student's forward/backward and the teacher's forward run their matmuls in bf16, the loss in fp32.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from llmpress.compress.distill.loss import TASKS, distillation_loss
from llmpress.errors import ConfigError, DataError


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """TrainingArguments plus the two distillation knobs and the task kind."""

    alpha: float = field(default=0.5, metadata={"help": "weight of the hard-label loss"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature of the soft targets"})
    task: str = field(default="single-label", metadata={"help": "causal-lm | single-label | multi-label"})


class DistillationTrainer(Trainer):
    """Trainer whose loss is `distillation_loss`. With no teacher (and no cached `teacher_logits`)
    it is plain supervised training on the hard labels (alpha is then ignored)."""

    def __init__(self, *args: Any, teacher: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        import torch
        import torch.nn.functional as F

        args: DistillationTrainingArguments = self.args  # type: ignore[assignment]
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        cached = inputs.pop("teacher_logits", None)
        out = model(**inputs)
        logits = out.logits
        if cached is None and self.teacher is None:
            if args.task == "causal-lm":
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                       labels[:, 1:].reshape(-1), ignore_index=-100)
            elif args.task == "single-label":
                loss = F.cross_entropy(logits.float(), labels)
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        else:
            if cached is not None:
                t_logits = cached
            else:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
                    self.teacher.eval()
                    t_logits = self.teacher(**inputs).logits
            loss = distillation_loss(logits, t_logits, labels, args.alpha, args.temperature, args.task)
        return (loss, out) if return_outputs else loss


class RichProgress(TrainerCallback):
    """One rich progress bar for the training steps, with the running loss in its description."""

    def __init__(self, progress: Any, description: str) -> None:
        self.progress = progress
        self.description = description
        self.task: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(self.description, total=state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if self.progress is not None and self.task is not None and logs and "loss" in logs:
            self.progress.update(self.task, description=f"{self.description} loss {logs['loss']:.3f}")


class EpochHook(TrainerCallback):
    """Calls `fn(epoch, model)` after every epoch (per-epoch metrics in the case study)."""

    def __init__(self, fn: Callable[[int, Any], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        was_training = model.training
        model.eval()
        self.fn(round(state.epoch or 0), model)
        if was_training:
            model.train()


def collate(pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Right-pad input_ids / attention_mask; stack labels and cached teacher logits.
    Written here because DataCollatorWithPadding does not carry a `teacher_logits` tensor."""
    import torch

    def fn(rows: list[dict[str, Any]]) -> dict[str, Any]:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.as_tensor(r["input_ids"])
            mask[i, :k] = 1
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "labels" in rows[0]:
            # class ids (int), 0/1 label vectors (multi-label) or token ids (causal LM, fixed windows)
            batch["labels"] = torch.stack([torch.as_tensor(r["labels"]) for r in rows])
        if "teacher_logits" in rows[0]:
            batch["teacher_logits"] = torch.stack([torch.as_tensor(r["teacher_logits"]) for r in rows])
        return batch

    return fn


def train(model: Any, dataset: Any, *, task: str, pad_id: int, teacher: Any = None, alpha: float = 0.5,
          temperature: float = 2.0, epochs: float = 1.0, max_steps: int = -1, batch_size: int = 8,
          lr: float = 5e-5, seed: int = 0, progress: Any = None, description: str = "train",
          on_epoch_end: Callable[[int, Any], None] | None = None, weight_decay: float = 0.0,
          bf16: bool | None = None) -> dict[str, Any]:
    """Train `model` in place on `dataset` (a list of dicts) with the distillation loss; returns stats.
    `bf16` None means autocast where the CPU has AMX or AVX512-BF16, False / True force it off / on."""
    from llmpress.hardware import cpu_has_bf16, world_size

    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
    if dataset is None or len(dataset) == 0:
        raise DataError("the training data is empty", "pass a corpus or labeled set with some examples")
    use_bf16 = cpu_has_bf16() if bf16 is None else bf16
    callbacks: list[TrainerCallback] = [RichProgress(progress, description)]
    if on_epoch_end is not None:
        callbacks.append(EpochHook(on_epoch_end))
    with tempfile.TemporaryDirectory(prefix="llmpress-distill-") as tmp:
        args = DistillationTrainingArguments(
            # data-parallel ranks (llmpress.scale.launch) each take their share of the global batch
            output_dir=tmp, per_device_train_batch_size=max(1, batch_size // world_size()),
            ddp_backend="gloo" if world_size() > 1 else None, ddp_find_unused_parameters=False, num_train_epochs=epochs, max_steps=max_steps,
            learning_rate=lr, weight_decay=weight_decay, lr_scheduler_type="linear", warmup_steps=0,
            logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
            remove_unused_columns=False, dataloader_num_workers=0, seed=seed, alpha=alpha,
            temperature=temperature, task=task, bf16=use_bf16)
        trainer = DistillationTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate(pad_id),
                                      teacher=teacher, callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; we show rich progress
        result = trainer.train()
    model.eval()
    return {"train_loss": round(float(result.training_loss), 5), "steps": int(result.global_step),
            "runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 2), "bf16": use_bf16}
