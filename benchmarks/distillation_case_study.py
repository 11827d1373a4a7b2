"""The seeds' teacher-vs-students distillation case study (003 §9.2.5, figures 9.3-9.4), on fortunes.

Teacher: SmolLM2-135M with a classification head, fine-tuned on the fortunes categories.
Students (a third of the teacher's decoder layers, <= 50 % of its parameters) both start from
one task-agnostic student: a layer subset of the *base* LM distilled on a general corpus
(causal LM, builtin:pydoc). Then
  task-agnostic  is fine-tuned on the task with the labels only;
  task-specific  is distilled on the task data from the fine-tuned teacher's logits (cached
                 once) + the labels: alpha*CE + (1-alpha)*T^2*KL, plus a transfer set: more
                 fortunes of the same categories, outside train and test, with their labels
                 dropped, which only the teacher can label (soft targets only).
The same start makes the teacher's soft targets the only difference between the two, as in the
seeds (a pretrained small model fine-tuned vs distilled). `--task-specific-init teacher` starts
the task-specific student from a layer subset of the fine-tuned teacher instead (DistilBERT-style).
Reported: accuracy and macro-F1 per epoch (Jaccard too for --multi-label), time to classify
16 items, peak memory (a fresh process per model), parameters; JSON + markdown + a plot.
Training runs under bf16 autocast where the CPU has AMX (see llmpress.hardware).

One command:  .venv/bin/python benchmarks/distillation_case_study.py
Smoke test:   .venv/bin/python benchmarks/distillation_case_study.py --model builtin:tiny-llama --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OUT = Path(__file__).resolve().parent / "results" / "distillation_case_study"
INIT_TEXT = {"general": "the same general-distilled student as task-agnostic",
             "teacher": "a layer subset of the fine-tuned teacher"}


# --------------------------------------------------------------------------- metrics
def metrics(pred: list[Any], gold: list[Any], n_labels: int, multi: bool) -> dict[str, float]:
    """Accuracy (exact match for multi-label), macro-F1 over labels, and (multi-label) sample Jaccard."""
    if multi:
        P = [set(p) for p in pred]
        G = [set(g) for g in gold]
    else:
        P = [{p} for p in pred]
        G = [{g} for g in gold]
    acc = sum(p == g for p, g in zip(P, G, strict=True)) / len(G)
    f1s = []
    for c in range(n_labels):
        tp = sum(c in p and c in g for p, g in zip(P, G, strict=True))
        fp = sum(c in p and c not in g for p, g in zip(P, G, strict=True))
        fn = sum(c not in p and c in g for p, g in zip(P, G, strict=True))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    out = {"accuracy": round(acc, 4), "macro_f1": round(sum(f1s) / n_labels, 4)}
    if multi:
        jac = [len(p & g) / len(p | g) if p | g else 1.0 for p, g in zip(P, G, strict=True)]
        out["jaccard"] = round(sum(jac) / len(jac), 4)
    return out


def predict(model: Any, tok: Any, texts: list[str], seq_len: int, multi: bool, batch: int = 32) -> list[Any]:
    import torch

    preds: list[Any] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, truncation=True, max_length=seq_len)
            logits = model(**enc).logits
            if multi:
                preds.extend([[j for j, v in enumerate(row) if v > 0] for row in logits.tolist()])
            else:
                preds.extend(logits.argmax(-1).tolist())
    return preds


def rows_for(tok: Any, texts: list[str], labels: list[Any], seq_len: int, ds: Any) -> list[dict[str, Any]]:
    out = []
    for text, lab in zip(texts, labels, strict=True):
        ids = tok(text, truncation=True, max_length=seq_len)["input_ids"]
        out.append({"input_ids": ids, "labels": ds.one_hot(lab) if ds.multi_label else lab})
    return out


# --------------------------------------------------------------------------- timing in a fresh process
TIMING_CHILD = r"""
import json, os, statistics, sys, time
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from llmpress.evaluate.speed import peak_rss_mb
torch.set_num_threads(int(sys.argv[3]))
path, seq_len = sys.argv[1], int(sys.argv[2])
texts = json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained(path)
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
model = AutoModelForSequenceClassification.from_pretrained(path).eval()
enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=seq_len)
times = []
with torch.no_grad():
    model(**enc)
    for _ in range(5):
        t = time.perf_counter(); model(**enc); times.append(time.perf_counter() - t)
print(json.dumps({"classify16_ms": statistics.median(times) * 1000, "classify16_ms_min": min(times) * 1000,
                  "classify16_ms_max": max(times) * 1000, "peak_rss_mb": peak_rss_mb()}))
"""


def time_and_memory(path: Path, texts: list[str], seq_len: int, threads: int) -> dict[str, float]:
    """Median time to classify 16 items (one batch, 5 repeats after a warm-up) and peak RSS, fresh process."""
    r = subprocess.run([sys.executable, "-c", TIMING_CHILD, str(path), str(seq_len), str(threads)],
                       input=json.dumps(texts), capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"timing child failed: {r.stderr[-2000:]}")
    return {k: round(v, 2) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


# --------------------------------------------------------------------------- the study
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--per-category", type=int, default=200, help="items per category before the 80/20 split")
    ap.add_argument("--transfer-per-category", type=int, default=400,
                    help="unlabeled in-domain items per category the teacher labels for the task-specific student "
                         "(0 = labeled data only)")
    ap.add_argument("--seq-len", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--student-epochs", type=int, default=4)
    ap.add_argument("--student-fraction", type=float, default=1 / 3, help="fraction of teacher layers kept")
    ap.add_argument("--general-steps", type=int, default=150, help="task-agnostic general distillation steps")
    ap.add_argument("--general-seq-len", type=int, default=128)
    ap.add_argument("--general-batch", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--teacher-lr", type=float, default=1e-4)
    ap.add_argument("--task-specific-init", choices=("general", "teacher"), default="general",
                    help="task-specific student start: the general-distilled student or a teacher layer subset")
    ap.add_argument("--student-lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--multi-label", action="store_true", help="the multi-label variant (Jaccard)")
    ap.add_argument("--train-embeddings", action="store_true",
                    help="also train the (tied) token embeddings; by default they are frozen to save CPU time")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--stem", default=None,
                    help="result file name (default: singlelabel | multilabel, plus -no-transfer when "
                         "--transfer-per-category 0)")
    args = ap.parse_args()
    if args.quick:
        args.per_category, args.teacher_epochs, args.student_epochs, args.general_steps = 20, 1, 1, 2
        args.transfer_per_category = min(args.transfer_per_category, 10)

    import torch
    from transformers import AutoModelForSequenceClassification

    from llmpress.artifact import Step, create_artifact
    from llmpress.cli.common import progress
    from llmpress.compress.distill import lm_dataset, train
    from llmpress.compress.distill.student import layer_subset
    from llmpress.data import load_corpus
    from llmpress.data.fortunes import load_fortunes
    from llmpress.modelstats import count_parameters
    from llmpress.sources import resolve
    from llmpress.sources.hf import quiet_hf, save_model

    def param_count(model: Any) -> int:
        return count_parameters(model, nonzero=False)["params"]

    quiet_hf()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    multi = args.multi_label
    ds = load_fortunes(per_category=args.per_category, multi_label=multi,
                       unlabeled_per_category=args.transfer_per_category)
    n_labels = len(ds.labels)
    base = resolve(args.model)
    tok = base.load_tokenizer()
    tok.padding_side = "right"
    train_rows = rows_for(tok, ds.train_texts, ds.train_labels, args.seq_len, ds)
    task = "multi-label" if multi else "single-label"
    history: dict[str, list[dict[str, Any]]] = {"teacher": [], "task-agnostic": [], "task-specific": []}
    phases: dict[str, float] = {}

    def classifier_from(path: Path) -> Any:
        m = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=n_labels,
            problem_type="multi_label_classification" if multi else "single_label_classification")
        m.config.pad_token_id = tok.pad_token_id
        m.config.id2label = dict(enumerate(ds.labels))
        m.config.label2id = {v: k for k, v in m.config.id2label.items()}
        return m

    def freeze_embeddings(model: Any) -> Any:
        if not args.train_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        return model

    def epoch_eval(name: str) -> Any:
        def fn(epoch: int, model: Any) -> None:
            pred = predict(model, tok, ds.test_texts, args.seq_len, multi)
            m = {"epoch": epoch, **metrics(pred, ds.test_labels, n_labels, multi)}
            history[name].append(m)
            print(f"[{name}] epoch {epoch}: {m}", file=sys.stderr, flush=True)
        return fn

    def save(name: str, model: Any, parent: Any, params: dict[str, Any]) -> Any:
        with create_artifact(name, Step("distill-case-study", params), parent=parent) as w:
            save_model(model, tok, w.path)
        return w.artifact

    with progress() as p:
        # 1. the task-agnostic student: a layer subset of the base LM, distilled on a general corpus
        t0 = time.perf_counter()
        torch.manual_seed(0)
        lm_teacher = base.load_model()
        total_layers = lm_teacher.config.num_hidden_layers
        n_layers = max(1, round(total_layers * args.student_fraction))
        lm_student = freeze_embeddings(layer_subset(lm_teacher, n_layers))
        corpus = load_corpus("builtin:pydoc")
        general = lm_dataset(tok, corpus.train, args.general_seq_len, args.general_steps * args.general_batch)
        g_stats = train(lm_student, general, task="causal-lm", pad_id=tok.pad_token_id, teacher=lm_teacher,
                        alpha=args.alpha, temperature=args.temperature, max_steps=args.general_steps,
                        batch_size=args.general_batch, lr=args.student_lr, progress=p,
                        description="general distillation (task-agnostic)")
        del lm_teacher
        g_art = save(f"general-distilled-{n_layers}L", lm_student, base,
                     {"role": "task-agnostic general", "steps": args.general_steps})
        del lm_student
        phases["general_distillation_s"] = time.perf_counter() - t0

        # 2. teacher: SmolLM2 + classification head, fine-tuned on the task
        t0 = time.perf_counter()
        torch.manual_seed(0)
        teacher = freeze_embeddings(classifier_from(base.path))
        train(teacher, train_rows, task=task, pad_id=tok.pad_token_id, epochs=args.teacher_epochs,
              batch_size=args.batch, lr=args.teacher_lr, progress=p, description="teacher fine-tune",
              on_epoch_end=epoch_eval("teacher"))
        phases["teacher_s"] = time.perf_counter() - t0
        t_art = save(f"fortunes-teacher-{base.name}", teacher, base, {"role": "teacher", "epochs": args.teacher_epochs})
        teacher_params = param_count(teacher)

        # 3. task-specific student: distilled on the task data from the teacher's (cached) logits + labels
        t0 = time.perf_counter()
        teacher.eval()
        unlabeled = [-100.0] * n_labels if multi else -100  # soft targets only (see loss.py)
        transfer_rows = [{"input_ids": tok(t, truncation=True, max_length=args.seq_len)["input_ids"],
                          "labels": unlabeled} for t in ds.unlabeled_texts]
        kd_rows = train_rows + transfer_rows
        with torch.no_grad():
            for i in range(0, len(kd_rows), 32):
                chunk = kd_rows[i:i + 32]
                enc = tok.pad({"input_ids": [r["input_ids"] for r in chunk]}, return_tensors="pt")
                logits = teacher(**enc).logits
                for r, lg in zip(chunk, logits, strict=True):
                    r["teacher_logits"] = lg.tolist()
        torch.manual_seed(0)
        if args.task_specific_init == "teacher":
            spec = freeze_embeddings(layer_subset(teacher, n_layers))
            spec_parent = t_art
        else:
            spec = freeze_embeddings(classifier_from(g_art.path))
            spec_parent = g_art
        del teacher
        train(spec, kd_rows, task=task, pad_id=tok.pad_token_id, alpha=args.alpha, temperature=args.temperature,
              epochs=args.student_epochs, batch_size=args.batch, lr=args.student_lr, progress=p,
              description="task-specific distillation", on_epoch_end=epoch_eval("task-specific"))
        phases["task_specific_s"] = time.perf_counter() - t0
        s_art = save(f"fortunes-task-specific-{n_layers}L", spec, spec_parent,
                     {"role": "task-specific", "init": args.task_specific_init, "teacher": t_art.id,
                      "alpha": args.alpha, "temperature": args.temperature, "epochs": args.student_epochs})
        for r in train_rows:
            r.pop("teacher_logits", None)

        # 4. task-agnostic student: the same start, fine-tuned on the task with the labels only
        t0 = time.perf_counter()
        torch.manual_seed(0)
        agn = freeze_embeddings(classifier_from(g_art.path))
        train(agn, train_rows, task=task, pad_id=tok.pad_token_id, epochs=args.student_epochs, batch_size=args.batch,
              lr=args.student_lr, progress=p, description="task-agnostic: task fine-tune",
              on_epoch_end=epoch_eval("task-agnostic"))
        phases["task_agnostic_s"] = time.perf_counter() - t0
        a_art = save(f"fortunes-task-agnostic-{n_layers}L", agn, g_art,
                     {"role": "task-agnostic", "epochs": args.student_epochs})
        params = {"teacher": teacher_params, "task-agnostic": param_count(agn),
                  "task-specific": param_count(spec)}
        del agn, spec

    # 5. time to classify 16 items and peak memory, each model in a fresh process
    sixteen = ds.test_texts[:16]
    arts = {"teacher": t_art, "task-agnostic": a_art, "task-specific": s_art}
    speed = {k: time_and_memory(a.path, sixteen, args.seq_len, args.threads) for k, a in arts.items()}

    final = {k: v[-1] for k, v in history.items()}
    t_f1 = final["teacher"]["macro_f1"]
    t_ms = speed["teacher"]["classify16_ms"]
    from llmpress.hardware import benchmark_record

    results = {
        **benchmark_record(sys.argv),
        "setup": {"model": args.model, "categories": ds.labels, "multi_label": multi, "train_items": len(ds.train_texts),
                  "test_items": len(ds.test_texts), "transfer_items": len(ds.unlabeled_texts), "seq_len": args.seq_len, "batch": args.batch,
                  "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
                  "student_layers": f"{n_layers} of {total_layers}",
                  "general_distillation": {"corpus": "builtin:pydoc", "steps": args.general_steps,
                                           "seq_len": args.general_seq_len, "batch": args.general_batch,
                                           "final_loss": g_stats["train_loss"]},
                  "task_specific_init": args.task_specific_init, "bf16": g_stats["bf16"],
                  "alpha": args.alpha, "temperature": args.temperature, "teacher_lr": args.teacher_lr,
                  "student_lr": args.student_lr, "embeddings_trained": args.train_embeddings, "threads": args.threads, "torch": torch.__version__},
        "history": history,
        "models": {k: {"artifact": arts[k].id, "params": params[k],
                       "param_pct_of_teacher": round(100 * params[k] / params["teacher"], 1), **final[k], **speed[k],
                       "f1_pct_of_teacher": round(100 * final[k]["macro_f1"] / t_f1, 1) if t_f1 else None,
                       "speedup_vs_teacher": round(t_ms / speed[k]["classify16_ms"], 2)} for k in arts},
        "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    stem = args.stem or ("multilabel" if multi else "singlelabel") + (
        "-no-transfer" if args.transfer_per_category == 0 else "")
    write_outputs(results, args.out, multi, stem)


def write_outputs(results: dict[str, Any], out: Path, multi: bool, stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmpress.hardware import machine_summary
    from llmpress.report.tables import markdown_table

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    keys = ["accuracy", "macro_f1"] + (["jaccard"] if multi else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4))
    for ax, key in zip(axes, keys, strict=True):
        for name, hist in results["history"].items():
            ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(f"{key} per epoch (test set)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("fortunes: teacher vs task-agnostic vs task-specific students")
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    headers = ["model", "params (M)", "% of teacher", "accuracy"] + (["jaccard"] if multi else []) + \
        ["macro-F1", "F1 % of teacher", "16 items (ms)", "speedup", "peak RSS (MB)"]
    rows = []
    for name, m in results["models"].items():
        rows.append([name, m["params"] / 1e6, m["param_pct_of_teacher"], m["accuracy"]] +
                    ([m["jaccard"]] if multi else []) +
                    [m["macro_f1"], m["f1_pct_of_teacher"], m["classify16_ms"], m["speedup_vs_teacher"],
                     m["peak_rss_mb"]])
    s = results["setup"]
    md = [f"# Distillation case study ({'multi-label' if multi else 'single-label'} fortunes)", "",
          f"Categories: {', '.join(s['categories'])}; {s['train_items']} train / {s['test_items']} test items; "
          f"transfer set for the task-specific student: {s.get('transfer_items', 0)} unlabeled items; "
          f"seq len {s['seq_len']}, batch {s['batch']}; teacher {s['teacher_epochs']} epochs, students "
          f"{s['student_epochs']} epochs with {s['student_layers']} layers; general distillation "
          f"{s['general_distillation']['steps']} steps on {s['general_distillation']['corpus']}; "
          f"alpha {s['alpha']}, T {s['temperature']}; teacher lr {s['teacher_lr']}, student lr {s['student_lr']}; "
          f"task-specific student starts from {INIT_TEXT[s.get('task_specific_init', 'teacher')]}; "
          f"bf16 autocast {'on' if s.get('bf16') else 'off'}; {s['threads']} threads; "
          f"total {results['total_seconds']:.0f} s.",
          "", machine_summary(results["machine"]), f"Command: `{results['command']}`",
          "", markdown_table(headers, rows, digits=3), "", "Per epoch (test set):", ""]
    hist_rows = [[name, h["epoch"]] + [h[k] for k in keys] for name, hist in results["history"].items() for h in hist]
    md.append(markdown_table(["model", "epoch"] + keys, hist_rows, digits=4))
    md += ["", f"![per-epoch metrics]({stem}.png)", ""]
    (out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
