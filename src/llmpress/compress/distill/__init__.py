"""Knowledge distillation: a student learns from a teacher's soft targets (plus hard labels).

`distill(teacher, config, student=None)` is the step: Artifact -> Artifact. The student is an
artifact (e.g. a pruned one), a layer subset of the teacher (`student_layers`), or a smaller
config (`student_config`). The teacher's head sets the task: a causal LM distils on a text
corpus (task-agnostic); a *ForSequenceClassification teacher on labeled data (task-specific),
single- or multi-label (`problem_type`), read from a jsonl of `{"text", "label"}` records whose
labels are the teacher's label names (or ids); a list of labels per record for multi-label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llmpress.artifact import Artifact, Step, create_artifact
from llmpress.compress.distill.loss import TASKS, distillation_loss
from llmpress.compress.distill.student import from_config, layer_subset, same_tokenizer
from llmpress.compress.distill.trainer import DistillationTrainer, DistillationTrainingArguments, train
from llmpress.errors import ConfigError, DataError
from llmpress.modelstats import count_parameters

__all__ = ["DistillConfig", "distill", "distillation_loss", "DistillationTrainer", "DistillationTrainingArguments",
           "layer_subset", "from_config", "train", "lm_dataset", "labeled_dataset", "model_task", "check_tokenizers"]


@dataclass
class DistillConfig:
    """Knobs of the distill step. `steps` optimizer steps of `batch_size` windows (causal LM) or
    records (classification) of up to `seq_len` tokens; `epochs`, when set, replaces `steps`.
    `task` "auto" takes the teacher's (see `model_task`)."""

    data: str = "builtin:pydoc"
    task: str = "auto"
    alpha: float = 0.5
    temperature: float = 2.0
    student_layers: int | None = None
    student_config: dict[str, Any] = field(default_factory=dict)
    steps: int = 100
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 1e-4
    epochs: float | None = None
    seed: int = 0
    name: str | None = None

    def validate(self) -> DistillConfig:
        if self.task != "auto" and self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}", f"use auto or one of {', '.join(TASKS)}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"--epochs {self.epochs} is not positive", "pass e.g. --epochs 3, or --steps N")
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
    from llmpress.data.windows import calibration_windows

    if not texts:
        raise DataError("the distillation corpus is empty", "pass --data with some text (e.g. builtin:pydoc)")
    n = max_windows if max_windows is not None else 10**9
    windows = calibration_windows(tokenizer, texts, n, seq_len)
    return [{"input_ids": w.tolist(), "labels": w.tolist()} for w in windows]


def model_task(model: Any) -> str:
    """causal-lm, single-label or multi-label: what a model's head computes."""
    if type(model).__name__.endswith("ForSequenceClassification"):
        multi = getattr(model.config, "problem_type", None) == "multi_label_classification"
        return "multi-label" if multi else "single-label"
    return "causal-lm"


def labeled_dataset(tokenizer: Any, spec: str, model_config: Any, multi: bool, seq_len: int) -> list[dict[str, Any]]:
    """Rows for classification distillation from a jsonl of `{"text", "label"}` records.

    A label is one of the teacher's label names (`config.label2id`) or a class id; multi-label
    records carry a list of them and become 0/1 vectors. Every record is checked first."""
    from llmpress.data.finetune import read_records

    kind, records = read_records(spec)
    if kind != "classification":
        raise DataError(f"{spec} holds {kind.replace('_', ' ')} records, and a classifier teacher distils on "
                        "labeled ones", 'pass a .jsonl of {"text": ..., "label": ...} lines, or a causal-LM teacher')
    n = int(model_config.num_labels)
    label2id = {str(k): int(v) for k, v in (getattr(model_config, "label2id", None) or {}).items()}

    def label_id(x: Any, where: str) -> int:
        if str(x) in label2id:
            return label2id[str(x)]
        if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < n:
            return x
        names = ", ".join(sorted(label2id, key=label2id.__getitem__)[:12])
        raise DataError(f"{where}: label {x!r} is not one of the teacher's {n} labels ({names})",
                        f"use the teacher's label names or ids 0..{n - 1}")

    rows: list[dict[str, Any]] = []
    for where, rec in records:
        labs = rec["label"] if isinstance(rec["label"], list) else [rec["label"]]
        if len(labs) > 1 and not multi:
            raise DataError(f"{where}: {len(labs)} labels for a single-label teacher",
                            "give one label per line, or distil a multi-label teacher")
        ids = {label_id(x, where) for x in labs}
        label: Any = [1.0 if i in ids else 0.0 for i in range(n)] if multi else ids.pop()
        enc = tokenizer(rec["text"], truncation=True, max_length=seq_len)
        rows.append({"input_ids": list(enc["input_ids"]), "labels": label})
    return rows


def distill(teacher: Artifact, config: DistillConfig, student: Artifact | None = None,
            dataset: list[dict[str, Any]] | None = None, progress: Any = None) -> Artifact | None:
    """Distil `teacher` into a student and write it as a new artifact whose parent is the teacher
    (None on data-parallel ranks other than 0).

    Without `dataset`, a causal-LM corpus is read from `config.data`. Checks (tokenizers,
    data, amounts) all happen before the first training step; on error nothing is written.
    """
    from llmpress.sources.hf import save_model

    config.validate()
    if dataset is not None and not dataset:
        raise DataError("the distillation data is empty", "pass a corpus or labeled set with some examples")
    t_model = teacher.load_model(dtype=None)
    task = model_task(t_model)
    if config.task not in ("auto", task):
        raise ConfigError(f"task {config.task} was asked for, but teacher {teacher.name} is a {task} model",
                          "leave the task on auto, or pass a teacher with that head")
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
    if model_task(s_model) != model_task(t_model):
        raise ConfigError(f"the teacher is a {model_task(t_model)} model and the student a {model_task(s_model)} one",
                          "distil into a student with the teacher's head (e.g. --student-layers N)")
    t_out = t_model.config.vocab_size if task == "causal-lm" else t_model.config.num_labels
    s_out = s_model.config.vocab_size if task == "causal-lm" else s_model.config.num_labels
    if t_out != s_out:
        raise ConfigError(f"teacher has {t_out} outputs and the student {s_out}",
                          "teacher and student need the same vocabulary / label set")
    pad_id = t_tok.pad_token_id if t_tok.pad_token_id is not None else 0  # causal-LM windows are never padded
    if task != "causal-lm":
        # the classifier pools the last non-pad token, so batches need a pad id in the config
        pad = t_model.config.pad_token_id if t_model.config.pad_token_id is not None else t_tok.pad_token_id
        if pad is None:
            raise ConfigError(f"teacher {teacher.name} has no pad token, so its classifier cannot batch",
                              "set pad_token_id in the teacher's config.json")
        t_model.config.pad_token_id = s_model.config.pad_token_id = pad_id = pad
    if dataset is None and task != "causal-lm":
        dataset = labeled_dataset(t_tok, config.data, t_model.config, task == "multi-label", config.seq_len)
    elif dataset is None:
        from llmpress.data import load_corpus

        corpus = load_corpus(config.data)
        dataset = lm_dataset(t_tok, corpus.train, config.seq_len, config.steps * config.batch_size)
    if not dataset:
        raise DataError("the distillation data is empty", "pass a corpus or labeled set with some examples")
    t_params, s_params = (count_parameters(m, nonzero=False)["params"] for m in (t_model, s_model))
    by_epochs = config.epochs is not None
    stats = train(s_model, dataset, task=task, pad_id=pad_id, teacher=t_model, alpha=config.alpha,
                  temperature=config.temperature, max_steps=-1 if by_epochs else config.steps,
                  epochs=config.epochs if by_epochs else 1.0, batch_size=config.batch_size,
                  lr=config.lr, seed=config.seed, progress=progress, description=f"distill ({task})")
    from llmpress.hardware import is_main_process, world_size

    if world_size() > 1:
        stats.update(processes=world_size(), global_batch=config.batch_size)
        if not is_main_process():  # data-parallel: rank 0 writes the one artifact
            return None
    params = {k: v for k, v in asdict(config).items()}
    params.update(origin, task=task, examples=len(dataset))
    name = config.name or f"{teacher.name}-distilled-{s_params / 1e6:.0f}M"
    with create_artifact(name, Step("distill", params), parent=teacher) as w:
        save_model(s_model, t_tok, w.path)
        w.manifest.extra.update({"teacher": teacher.id, **origin})
        w.manifest.metrics["distill"] = {**stats, "teacher_params": t_params, "student_params": s_params,
                                         "param_ratio": round(s_params / t_params, 4)}
    assert w.artifact is not None
    return w.artifact
