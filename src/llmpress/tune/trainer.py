"""One training loop for every method: the HF Trainer plus what llmpress records around it.

Callbacks add rich progress, a Ctrl-C that saves a resumable checkpoint at the next step
boundary (the Trainer's own checkpointing does the saving), timing of the optimizer steps
alone (so steps/s excludes evaluation), and a background sampler of peak RSS.
"""

from __future__ import annotations

import math
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpress.data.finetune import IGNORE, FinetuneData
from llmpress.errors import LlmpressError
from llmpress.hardware import cpu_has_bf16, is_main_process, world_size  # noqa: F401 (re-exported)
from llmpress.tune.config import TrainConfig


class TrainingInterrupted(LlmpressError):
    """Ctrl-C during training: a checkpoint was saved and `--resume` continues from it."""

    exit_code = 130


def use_bf16(cfg: TrainConfig) -> bool:
    return cfg.bf16 == "on" or (cfg.bf16 == "auto" and cpu_has_bf16())


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class RssSampler:
    """Max resident set size seen while running, sampled every `interval` s in a thread.

    ru_maxrss alone would also count whatever the process did before training (loading,
    earlier runs); sampling gives the peak of this phase.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def process_max_rss_bytes() -> int:
    """ru_maxrss of this process (KiB on Linux): the lifetime peak, for one-method-per-process runs."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class ListDataset:
    """A map-style dataset over tokenized examples (the Trainer needs __len__/__getitem__)."""

    def __init__(self, examples: list[Any]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i].to_features()


def collate(pad_id: int):
    """Right-pad a batch to its longest example; labels pad with -100 so padding carries no loss."""
    import torch

    def fn(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return fn


@dataclass
class TrainResult:
    steps: int
    eval_loss_before: float
    eval_loss_after: float
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)
    steps_per_s: float = 0.0
    step_seconds: float = 0.0
    peak_rss_bytes: int = 0
    process_max_rss_bytes: int = 0
    bf16: bool = False
    resumed_from: str | None = None


def _callbacks(progress: Any, total: int, interrupted: threading.Event, timing: dict[str, float]) -> list[Any]:
    from transformers import TrainerCallback

    trim = heap_trimmer()

    class Flow(TrainerCallback):
        """Progress, step timing, and Ctrl-C -> save a checkpoint and stop at the step boundary."""

        task = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            if progress is not None:
                self.task = progress.add_task("training", total=state.max_steps or total,
                                              completed=state.global_step)

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            timing["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if trim is not None:
                trim()
            timing["seconds"] += time.perf_counter() - timing.get("t0", time.perf_counter())
            timing["steps"] += 1
            if interrupted.is_set():
                control.should_save = True
                control.should_training_stop = True
            if progress is not None and self.task is not None:
                progress.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if progress is not None and self.task is not None and logs and "loss" in logs:
                progress.update(self.task, description=f"training (loss {logs['loss']:.3f})")

    return [Flow()]


def heap_trimmer(mmap_threshold: int = 1 << 20) -> Any:
    """Keep training RSS honest on glibc: a fixed mmap threshold, and a function that returns freed
    heap memory to the OS (`malloc_trim`), called once per optimizer step. None off glibc.

    Training allocates and frees activation and gradient buffers of many sizes each step; glibc
    keeps freed chunks and raises its mmap threshold as big blocks come and go, so RSS creeps up
    step after step and a method's "peak memory" measures the allocator's history. Measured on
    SmolLM2 (LoRA r=16, 12 steps, batch 4 x 128, checkpointing): peak 1940 MB untouched, 1815 MB
    with trimming, 1626 MB with trimming + a 1 MiB threshold at the same steps/s (0.63 vs 0.64);
    a 128 KiB threshold reached 1551 MB but cost ~45 % of the step rate.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD, fixed: stops glibc raising it
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


def run_training(model: Any, tokenizer: Any, data: FinetuneData, cfg: TrainConfig, lr: float, run_dir: Path,
                 resume: bool = False, progress: Any = None, extra_callbacks: list[Any] | None = None) -> TrainResult:
    """Train `model` in place on `data`; checkpoints go to `run_dir` (only when interrupted)."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint


    bf16 = use_bf16(cfg)
    per_epoch = math.ceil(len(data.train) / (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(per_epoch * cfg.epochs))
    eval_every = cfg.eval_every or max(1, total // 5)
    checkpoint = None
    if resume:
        checkpoint = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
        if checkpoint is None:
            from llmpress.errors import NotFoundError

            raise NotFoundError(f"no checkpoint to resume in {run_dir}",
                                "run without --resume (nothing was interrupted with these settings)")
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=lr, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, lr_scheduler_type="linear",
        bf16=bf16, use_cpu=True, activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=1, eval_strategy="steps", eval_steps=eval_every, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=cfg.seed, data_seed=cfg.seed, remove_unused_columns=False,
        dataloader_num_workers=0, label_names=["labels"],
        ddp_backend="gloo" if world_size() > 1 else None,  # data-parallel ranks (llmpress.scale.launch) on CPU
    )
    if cfg.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # PEFT + checkpointing needs grads flowing from the inputs
    interrupted = threading.Event()
    timing = {"seconds": 0.0, "steps": 0.0}
    trainer = Trainer(model=model, args=args, data_collator=collate(tokenizer.pad_token_id),
                      train_dataset=ListDataset(data.train), eval_dataset=ListDataset(data.eval),
                      callbacks=_callbacks(progress, total, interrupted, timing) + list(extra_callbacks or []))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; progress shows the loss
    before = float(trainer.evaluate()["eval_loss"])

    def on_sigint(signum: int, frame: Any) -> None:
        if interrupted.is_set():  # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        interrupted.set()

    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        with RssSampler() as rss:
            trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, old)
    if interrupted.is_set():
        raise TrainingInterrupted(f"interrupted at step {trainer.state.global_step}/{total}; "
                                  f"checkpoint saved in {run_dir}",
                                  "run the same command again with --resume to continue")
    after = float(trainer.evaluate()["eval_loss"])
    hist = trainer.state.log_history
    return TrainResult(
        steps=int(trainer.state.global_step),
        eval_loss_before=before, eval_loss_after=after,
        train_curve=[(int(h["step"]), float(h["loss"])) for h in hist if "loss" in h],
        eval_curve=[(0, before)] + [(int(h["step"]), float(h["eval_loss"])) for h in hist if "eval_loss" in h],
        steps_per_s=timing["steps"] / timing["seconds"] if timing["seconds"] else 0.0,
        step_seconds=timing["seconds"], peak_rss_bytes=rss.peak, process_max_rss_bytes=process_max_rss_bytes(),
        bf16=bf16, resumed_from=checkpoint,
    )


def plot_curves(result: TrainResult, dest: Path, title: str) -> None:
    """Train and eval loss against step, as a PNG beside the artifact's weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if result.train_curve:
        ax.plot(*zip(*result.train_curve, strict=True), label="train loss", alpha=0.7)
    if result.eval_curve:
        ax.plot(*zip(*result.eval_curve, strict=True), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
