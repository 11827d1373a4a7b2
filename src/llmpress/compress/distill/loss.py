"""Distillation loss: α · hard-label loss + (1 − α) · T² · KL(teacher ‖ student) at temperature T.

Three tasks share one formula:
  "causal-lm":    token logits; labels are next-token ids (shifted here; -100 ignored);
                  KL over the vocabulary at each position, averaged over labelled positions.
  "single-label": sequence logits; CE on class ids; KL over the classes. A class id of -100
                  marks an unlabeled row (a transfer-set item): it adds to the KL term only.
  "multi-label":  sequence logits of independent labels; BCE on 0/1 targets; the KL is that of
                  each label's Bernoulli(sigmoid(z/T)) (softmax across labels would make them compete),
                  averaged over labels. A row of -100s marks an unlabeled row: KL term only.
T² keeps the soft-target gradients on the scale of the hard-label ones (Hinton et al., 2015).
"""

from __future__ import annotations

from typing import Any

from llmpress.errors import ConfigError

TASKS = ("causal-lm", "single-label", "multi-label")


def _kl_softmax(student: Any, teacher: Any, temperature: float) -> Any:
    """KL(softmax(teacher/T) ‖ softmax(student/T)) per row, rows in the last dim."""
    import torch.nn.functional as F

    log_p_s = F.log_softmax(student / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)


def _kl_bernoulli(student: Any, teacher: Any, temperature: float) -> Any:
    """Mean over labels of KL(Bern(σ(t/T)) ‖ Bern(σ(s/T)))."""
    import torch.nn.functional as F

    zs, zt = student / temperature, teacher / temperature
    p_t = zt.sigmoid()
    kl = p_t * (F.logsigmoid(zt) - F.logsigmoid(zs)) + (1 - p_t) * (F.logsigmoid(-zt) - F.logsigmoid(-zs))
    return kl.mean(-1)


def distillation_loss(student_logits: Any, teacher_logits: Any, labels: Any, alpha: float = 0.5,
                      temperature: float = 2.0, task: str = "single-label") -> Any:
    """The combined loss (a scalar tensor). `labels` may be None when alpha == 0 (pure distillation)."""
    import torch
    import torch.nn.functional as F

    if task not in TASKS:
        raise ConfigError(f"unknown distillation task {task!r}", f"use one of {', '.join(TASKS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha {alpha} is outside [0, 1]", "pass --alpha between 0 and 1")
    if temperature <= 0:
        raise ConfigError(f"temperature {temperature} is not positive", "pass --temperature > 0, e.g. 2")
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} differ in shape",
                          "teacher and student need the same vocabulary / label set")
    s, t = student_logits.float(), teacher_logits.float()
    if task == "causal-lm":
        s, t = s[:, :-1], t[:, :-1]
        if labels is None:
            mask = torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
            hard = s.new_zeros(())
        else:
            tgt = labels[:, 1:]
            mask = tgt != -100
            hard = F.cross_entropy(s.reshape(-1, s.shape[-1]), tgt.reshape(-1), ignore_index=-100)
        kl = _kl_softmax(s, t, temperature)
        soft = (kl * mask).sum() / mask.sum().clamp(min=1)
    elif task == "single-label":
        # label -100 marks an unlabeled row (a transfer-set item): soft targets only
        has = labels != -100 if labels is not None else None
        hard = F.cross_entropy(s[has], labels[has]) if has is not None and bool(has.any()) else s.new_zeros(())
        soft = _kl_softmax(s, t, temperature).mean()
    else:
        # a row of -100s marks an unlabeled row (a transfer-set item): soft targets only
        has = (labels != -100).all(-1) if labels is not None else None
        hard = (F.binary_cross_entropy_with_logits(s[has], labels[has].float())
                if has is not None and bool(has.any()) else s.new_zeros(()))
        soft = _kl_bernoulli(s, t, temperature).mean()
    if labels is None and alpha > 0:
        raise ConfigError("alpha > 0 needs labels for the hard-label term", "pass labels or alpha 0")
    return alpha * hard + (1 - alpha) * temperature**2 * soft
