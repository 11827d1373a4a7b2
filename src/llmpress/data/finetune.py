"""Fine-tuning data: instruction chats, labeled texts and plain text, tokenized with loss masks.

Three kinds, detected from the file:
- instruction: jsonl `{"messages": [{"role", "content"}, ...]}` rendered with the tokenizer's chat
  template; only assistant tokens carry loss (prompt tokens are masked with -100).
- classification: jsonl `{"text", "label"}`, trained as a causal LM on "text -> label" with loss on
  the label only, so the result stays a causal LM the engine can serve; accuracy is scored by
  comparing the log-likelihood of every label.
- causal LM: .txt / jsonl `{"text"}` / `builtin:pydoc` through `llmpress.data.load_corpus`, cut
  into fixed blocks with loss on every token.

The train/eval split is by a stable hash of each record (`llmpress.data.split_of`), never by RNG.
`builtin:pydoc-instruct` builds instruction pairs from the stdlib docs ("Explain the Python topic X"
-> its first paragraph) so a real task exists on a machine without internet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpress.data import load_corpus, split_of
from llmpress.errors import DataError, NotFoundError

IGNORE = -100  # label id the HF loss ignores
KINDS = ("instruction", "classification", "causal_lm")
ROLES = ("system", "user", "assistant", "tool")
LABEL_PROMPT = "\nLabel:"


@dataclass
class Example:
    """One tokenized training example; `labels` is -100 wherever no loss is taken."""

    input_ids: list[int]
    labels: list[int]

    def to_features(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": [1] * len(self.input_ids)}


@dataclass
class FinetuneData:
    """Tokenized train / eval examples plus what evaluation needs (labels and raw eval records)."""

    name: str
    kind: str
    train: list[Example]
    eval: list[Example]
    label_set: list[str] = field(default_factory=list)
    eval_records: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0  # examples whose target was cut away by truncation

    def summary(self) -> dict[str, Any]:
        return {"data": self.name, "kind": self.kind, "train_examples": len(self.train),
                "eval_examples": len(self.eval), "train_tokens": sum(len(e.input_ids) for e in self.train),
                "dropped": self.dropped, **({"labels": self.label_set} if self.label_set else {})}


# -- reading records --------------------------------------------------------------------


def _pydoc_instruct() -> list[dict[str, Any]]:
    """Instruction pairs from the stdlib docs: topic name -> first paragraph of its text."""
    from pydoc_data.topics import topics

    out = []
    for name, text in sorted(topics.items()):
        paras = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
        if not paras:
            continue
        answer = " ".join(paras[0].split())[:600]
        out.append({"messages": [{"role": "user", "content": f"Explain the Python topic {name!r}."},
                                 {"role": "assistant", "content": answer}]})
    return out


BUILTIN_SETS = {"pydoc-instruct": _pydoc_instruct}


def _kind_of(rec: Any, where: str) -> str:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}", "fix that line")
    if "messages" in rec:
        return "instruction"
    if "text" in rec and "label" in rec:
        return "classification"
    if "text" in rec:
        return "causal_lm"
    raise DataError(f"{where}: record has none of the fields 'messages', 'text'+'label' or 'text' "
                    f"(has {sorted(rec)[:6]})", "use {\"messages\": [...]}, {\"text\", \"label\"} or {\"text\"}")


def _check_record(rec: dict[str, Any], kind: str, where: str) -> None:
    if kind == "instruction":
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: 'messages' must be a non-empty list", "fix that line")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: message {i} needs string 'role' and 'content'", "fix that line")
            if m["role"] not in ROLES:
                raise DataError(f"{where}: message {i} has unknown role {m['role']!r}", f"use one of {', '.join(ROLES)}")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: no assistant message, so nothing to learn", "add the assistant's answer")
    elif kind == "classification":
        if not isinstance(rec["text"], str) or not rec["text"].strip():
            raise DataError(f"{where}: 'text' must be a non-empty string", "fix that line")
        lab = rec["label"]
        labs = lab if isinstance(lab, list) else [lab]
        if not labs or any(not isinstance(x, str | int | bool) or str(x).strip() == "" for x in labs):
            raise DataError(f"{where}: 'label' must be a non-empty string or integer (or, for a multi-label "
                            "teacher in `llmpress distill`, a non-empty list of them)", "fix that line")


def read_records(spec: str) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(kind, [(where, record)]) of a jsonl file or built-in set; every line is checked, errors name it."""
    if spec.startswith("builtin:") and spec.removeprefix("builtin:") in BUILTIN_SETS:
        recs = BUILTIN_SETS[spec.removeprefix("builtin:")]()
        return "instruction", [(f"{spec}#{i}", r) for i, r in enumerate(recs)]
    path = Path(spec).expanduser()
    if not path.exists():
        raise NotFoundError(f"data file {path} does not exist",
                            "check the path, or use builtin:pydoc-instruct / builtin:pydoc")
    if path.is_dir():
        raise DataError(f"{path} is a directory", "pass a .jsonl or .txt file")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty", "pass a file with at least one record")
    kind: str | None = None
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})", "convert it to UTF-8") from e
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})", "fix or remove that line") from e
        k = _kind_of(rec, where)
        if kind is None:
            kind = k
        elif k != kind:
            raise DataError(f"{where}: a {k} record in a file whose first record is {kind}",
                            "keep one kind of record per file")
        _check_record(rec, k, where)
        out.append((where, rec))
    if kind is None:
        raise DataError(f"{path} has no records (only blank lines)", "pass a file with at least one record")
    return kind, out


def detect_kind(spec: str) -> str:
    """instruction | classification | causal_lm for a data spec, reading only what is needed."""
    if spec.startswith("builtin:"):
        return "instruction" if spec.removeprefix("builtin:") in BUILTIN_SETS else "causal_lm"
    if Path(spec).suffix != ".jsonl":
        return "causal_lm"
    return read_records(spec)[0]


# -- tokenizing -------------------------------------------------------------------------


def _render_chat(tokenizer: Any, messages: list[dict[str, str]], seq_len: int, where: str) -> Example:
    """Chat template rendering with loss only on assistant turns (found via character spans)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: the model's tokenizer has no chat template, so instruction data cannot be rendered",
                        "use a chat model or convert the data to {\"text\"} records")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)) if i else 0
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        spans.append((start, end))
    # The template already holds the special tokens (BOS, <|im_start|>), so none are added again.
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=seq_len)
    labels = [tok if any(s <= a < e for s, e in spans) else IGNORE
              for tok, (a, _b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)]
    return Example(list(enc["input_ids"]), labels)


def _render_labeled(tokenizer: Any, text: str, label: str, seq_len: int) -> Example:
    """`text\\nLabel: <label><eos>` with loss on ` <label><eos>`; the text is cut, never the label."""
    target = tokenizer(" " + label, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        target = target + [tokenizer.eos_token_id]
    prompt = classification_prompt_ids(tokenizer, text, seq_len - len(target))
    return Example(prompt + target, [IGNORE] * len(prompt) + target)


def classification_prompt_ids(tokenizer: Any, text: str, budget: int) -> list[int]:
    """Token ids of the prompt a classifier example is scored after (text cut to fit `budget`)."""
    tail = tokenizer(LABEL_PROMPT, add_special_tokens=False)["input_ids"]
    head = tokenizer(text, add_special_tokens=False)["input_ids"][: max(1, budget - len(tail))]
    return head + tail


def load_finetune_data(spec: str, tokenizer: Any, seq_len: int = 256, kind: str = "auto",
                       max_train: int | None = None, max_eval: int | None = None) -> FinetuneData:
    """Read, validate, split and tokenize a data spec for `llmpress tune`."""
    if seq_len < 8:
        raise DataError(f"sequence length {seq_len} is too short", "use --seq-len 64 or more")
    detected = detect_kind(spec)
    if kind != "auto" and kind != detected:
        raise DataError(f"{spec} holds {detected} data, not {kind}", f"drop --task or pass --task {detected}")
    if detected == "causal_lm":
        return _causal(spec, tokenizer, seq_len, max_train, max_eval)
    _, records = read_records(spec)
    multi = next((where for where, r in records if isinstance(r.get("label"), list)), None)
    if multi is not None:
        raise DataError(f"{multi}: a list of labels; `llmpress tune` learns one label per text",
                        "give one label per line (lists are for `llmpress distill` with a multi-label teacher)")
    train: list[Example] = []
    train_records: list[dict[str, Any]] = []
    evals: list[Example] = []
    eval_records: list[dict[str, Any]] = []
    dropped = 0
    labels = sorted({str(r["label"]) for _, r in records}) if detected == "classification" else []
    for where, rec in records:
        if detected == "instruction":
            ex = _render_chat(tokenizer, rec["messages"], seq_len, where)
            key = json.dumps(rec["messages"], sort_keys=True)
        else:
            ex = _render_labeled(tokenizer, rec["text"], str(rec["label"]), seq_len)
            key = rec["text"]
        if all(t == IGNORE for t in ex.labels):
            dropped += 1
            continue
        if split_of(key) == "eval":
            evals.append(ex)
            eval_records.append(rec)
        else:
            train.append(ex)
            train_records.append(rec)
    if not train and len(evals) > 1:  # a tiny file may hash entirely into eval: keep one to train on
        train.append(evals.pop())
        train_records.append(eval_records.pop())
    if not evals and len(train) > 1:
        evals.append(train.pop())
        eval_records.append(train_records.pop())
    if not train:
        raise DataError(f"{spec}: no example keeps a target after truncation to {seq_len} tokens ({dropped} dropped)",
                        "raise --seq-len or shorten the prompts")
    if not evals:
        raise DataError(f"{spec} has a single usable example; need at least 2 for a train/eval split",
                        "add more records")
    name = spec if spec.startswith("builtin:") else str(Path(spec).expanduser())
    return FinetuneData(name, detected, train[:max_train] if max_train else train,
                        evals[:max_eval] if max_eval else evals, labels,
                        eval_records[:max_eval] if max_eval else eval_records, dropped)


def _causal(spec: str, tokenizer: Any, seq_len: int, max_train: int | None, max_eval: int | None) -> FinetuneData:
    from llmpress.data.windows import training_blocks

    corpus = load_corpus(spec)
    train_texts = corpus.train + corpus.calibration
    if not train_texts or not corpus.eval:
        raise DataError(f"{spec} is too small for a train/eval split", "add more text (a few paragraphs at least)")
    def blocks(texts: list[str], cap: int | None) -> list[Example]:
        try:
            bl = training_blocks(texts, tokenizer, seq_len, cap)
        except DataError:
            # Fewer tokens than one block: train on the whole (short) stream instead of failing.
            from llmpress.data.windows import token_stream

            ids = token_stream(texts, tokenizer)
            if len(ids) < 2:
                raise
            bl = [ids[:seq_len]]
        return [Example(b, list(b)) for b in bl]

    return FinetuneData(corpus.name, "causal_lm", blocks(train_texts, max_train), blocks(corpus.eval, max_eval))
