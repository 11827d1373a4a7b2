"""Knowledge distillation: a student learns from a teacher's soft targets (plus hard labels).

`distill(teacher, config, student=None)` is the step: Artifact -> Artifact. The student is an
artifact (e.g. a pruned one), a layer subset of the teacher (`student_layers`), or a smaller
config (`student_config`). Causal LMs distil on a text corpus (task-agnostic); sequence
classifiers on labeled data (task-specific), single- or multi-label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llmpress.artifact import Artifact, Step, create_artifact
from llmpress.compress.distill.loss import TASKS, distillation_loss
from llmpress.compress.distill.student import from_config, layer_subset, param_count, same_tokenizer
from llmpress.compress.distill.trainer import DistillationTrainer, DistillationTrainingArguments, train
from llmpress.errors import ConfigError, DataError

__all__ = ["DistillConfig", "distill", "distillation_loss", "DistillationTrainer", "DistillationTrainingArguments",
           "layer_subset", "from_config", "train", "lm_dataset", "check_tokenizers"]


@dataclass
class DistillConfig:
    """Knobs of the distill step. `steps` optimizer steps of `batch_size` windows of `seq_len` tokens."""

    data: str = "builtin:pydoc"
    task: str = "causal-lm"
    alpha: float = 0.5
    temperature: float = 2.0
    student_layers: int | None = None
    student_config: dict[str, Any] = field(default_factory=dict)
    steps: int = 100
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 1e-4
    seed: int = 0
    name: str | None = None

    def validate(self) -> DistillConfig:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}", f"use one of {', '.join(TASKS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha {self.alpha} is outside [0, 1]", "pass a weight between 0 and 1, e.g. 0.5")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature {self.temperature} is not positive", "pass e.g. --temperature 2")
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 8:
            raise ConfigError("steps and batch size must be >= 1 and seq_len >= 8", "raise --steps / --batch / --seq-len")
        return self


def check_tokenizers(teacher_tok: Any, student_tok: Any, teacher_name: str, student_name: str) -> None:
    """Token-level distillation compares logits id by id: the two vocabularies must be identical."""
    if not same_tokenizer(teacher_tok, student_tok):
        raise ConfigError(
            f"teacher {teacher_name} and student {student_name} use different tokenizers "
            f"({type(teacher_tok).__name__}, {len(teacher_tok)} tokens vs {type(student_tok).__name__}, "
            f"{len(student_tok)} tokens)",
            "distil into a student that shares the teacher's tokenizer (e.g. --student-layers N)")


def lm_dataset(tokenizer: Any, texts: list[str], seq_len: int, max_windows: int | None = None) -> list[dict[str, Any]]:
    """Fixed causal-LM windows (labels = inputs; the loss shifts them) from a list of texts."""
    from llmpress.compress.prune.calibration import calibration_windows

    if not texts:
        raise DataError("the distillation corpus is empty", "pass --data with some text (e.g. builtin:pydoc)")
    n = max_windows if max_windows is not None else 10**9
    windows = calibration_windows(tokenizer, texts, n, seq_len)
    return [{"input_ids": w.tolist(), "labels": w.tolist()} for w in windows]


def distill(teacher: Artifact, config: DistillConfig, student: Artifact | None = None,
            dataset: list[dict[str, Any]] | None = None, progress: Any = None) -> Artifact:
    """Distil `teacher` into a student and write it as a new artifact whose parent is the teacher.

    Without `dataset`, a causal-LM corpus is read from `config.data`. Checks (tokenizers,
    data, amounts) all happen before the first training step; on error nothing is written.
    """
    from llmpress.sources.hf import save_model

    config.validate()
    t_model = teacher.load_model(dtype=None)
    t_tok = teacher.load_tokenizer()
    if student is not None:
        if config.student_layers or config.student_config:
            raise ConfigError("give either a student artifact or --student-layers / a student config, not both",
                              "drop one of them")
        s_tok = student.load_tokenizer()
        check_tokenizers(t_tok, s_tok, teacher.name, student.name)
        s_model = student.load_model()
        origin: dict[str, Any] = {"student_artifact": student.id}
    elif config.student_layers:
        s_model = layer_subset(t_model, config.student_layers)
        origin = {"student_layers": s_model.config.llmpress_student_layers}
    elif config.student_config:
        s_model = from_config(t_model, **config.student_config)
        origin = {"student_config": dict(config.student_config)}
    else:
        raise ConfigError("no student given", "pass --student ARTIFACT or --student-layers N")
    t_out = t_model.config.vocab_size if config.task == "causal-lm" else t_model.config.num_labels
    s_out = s_model.config.vocab_size if config.task == "causal-lm" else s_model.config.num_labels
    if t_out != s_out:
        raise ConfigError(f"teacher has {t_out} outputs and the student {s_out}",
                          "teacher and student need the same vocabulary / label set")
    if dataset is None:
        if config.task != "causal-lm":
            raise ConfigError(f"task {config.task} needs a labeled dataset", "use the Python API with dataset=...")
        from llmpress.data import load_corpus

        corpus = load_corpus(config.data)
        dataset = lm_dataset(t_tok, corpus.train, config.seq_len, config.steps * config.batch_size)
    if not dataset:
        raise DataError("the distillation data is empty", "pass a corpus or labeled set with some examples")
    t_params, s_params = param_count(t_model), param_count(s_model)
    stats = train(s_model, dataset, task=config.task, pad_id=t_tok.pad_token_id, teacher=t_model, alpha=config.alpha,
                  temperature=config.temperature, max_steps=config.steps, batch_size=config.batch_size,
                  lr=config.lr, seed=config.seed, progress=progress, description="distill")
    params = {k: v for k, v in asdict(config).items()}
    params.update(origin)
    name = config.name or f"{teacher.name}-distilled-{s_params / 1e6:.0f}M"
    with create_artifact(name, Step("distill", params), parent=teacher) as w:
        save_model(s_model, t_tok, w.path)
        w.manifest.extra.update({"teacher": teacher.id, **origin})
        w.manifest.metrics["distill"] = {**stats, "teacher_params": t_params, "student_params": s_params,
                                         "param_ratio": round(s_params / t_params, 4)}
    assert w.artifact is not None
    return w.artifact
