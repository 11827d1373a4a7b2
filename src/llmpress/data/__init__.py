"""Corpora: `builtin:pydoc`, local .txt / .jsonl files, Hugging Face dataset ids.

A corpus is three deterministic splits of plain texts: `train`, `calibration` (for
quantization / pruning statistics) and `eval` (held out for perplexity).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from llmpress.errors import DataError, NotFoundError, OfflineError

__all__ = ["Corpus", "load_corpus", "split_of"]

SPLITS = ("train", "calibration", "eval")


@dataclass
class Corpus:
    name: str
    train: list[str] = field(default_factory=list)
    calibration: list[str] = field(default_factory=list)
    eval: list[str] = field(default_factory=list)

    def split(self, which: str) -> list[str]:
        if which not in SPLITS:
            raise DataError(f"unknown split {which!r}", f"use one of {', '.join(SPLITS)}")
        texts = getattr(self, which)
        if not texts:
            raise DataError(f"corpus {self.name!r} has an empty {which} split", "use a larger corpus")
        return texts

    def chars(self) -> dict[str, int]:
        return {s: sum(len(t) for t in getattr(self, s)) for s in SPLITS}


def split_of(key: str, eval_pct: int = 15, calibration_pct: int = 10) -> str:
    """Deterministic split by a stable hash of a document key (never by position or RNG)."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    if bucket < eval_pct:
        return "eval"
    if bucket < eval_pct + calibration_pct:
        return "calibration"
    return "train"


def _from_docs(name: str, docs: list[tuple[str, str]]) -> Corpus:
    corpus = Corpus(name)
    for key, text in docs:
        text = text.strip()
        if text:
            getattr(corpus, split_of(key)).append(text)
    if not (corpus.train or corpus.eval or corpus.calibration):
        raise DataError(f"corpus {name!r} is empty", "pass a file with some text in it")
    # A small corpus may leave a split empty by hashing: borrow one document so each split exists.
    for s in SPLITS:
        if not getattr(corpus, s):
            donor = max(SPLITS, key=lambda x: len(getattr(corpus, x)))
            if len(getattr(corpus, donor)) > 1:
                getattr(corpus, s).append(getattr(corpus, donor).pop())
    return corpus


def _pydoc() -> Corpus:
    from pydoc_data.topics import topics

    return _from_docs("builtin:pydoc", sorted(topics.items()))


def _text_file(path: Path) -> Corpus:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})", "convert it to UTF-8") from e
    # Documents are blank-line separated paragraphs, keyed by position-independent content hash.
    paras = [p for p in raw.split("\n\n") if p.strip()]
    if not paras:
        raise DataError(f"{path} contains no text", "pass a non-empty .txt file")
    return _from_docs(str(path), [(p, p) for p in paras])


def _jsonl_file(path: Path, field_name: str) -> Corpus:
    docs: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})", "fix or remove that line") from e
            if not isinstance(rec, dict) or field_name not in rec:
                raise DataError(f"{path}:{lineno}: no field {field_name!r}",
                                "pass --field with the name of the text field")
            if not isinstance(rec[field_name], str):
                raise DataError(f"{path}:{lineno}: field {field_name!r} is not a string", "fix that line")
            docs.append((f"{lineno}:{rec[field_name][:64]}", rec[field_name]))
    if not docs:
        raise DataError(f"{path} has no records", "pass a non-empty .jsonl file")
    return _from_docs(str(path), docs)


def _hf_dataset(spec: str, field_name: str) -> Corpus:
    """The real `datasets.load_dataset` path (`hf:NAME[:CONFIG]`); offline it fails clearly."""
    try:
        import datasets
    except ImportError as e:
        raise DataError("Hugging Face datasets support is not installed", "pip install 'llmpress[data]'") from e
    name, _, config = spec.removeprefix("hf:").partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # noqa: BLE001 - the hub raises many classes; all mean "not reachable here"
        raise OfflineError(f"cannot load dataset {name!r}: this machine is offline or the id is wrong",
                           "save it as .jsonl elsewhere and pass the file path") from e
    if field_name not in ds.column_names:
        raise DataError(f"dataset {name!r} has no column {field_name!r} (columns: {ds.column_names})",
                        "pass --field")
    return _from_docs(spec, [(f"{i}", t) for i, t in enumerate(ds[field_name]) if isinstance(t, str)])


BUILTIN_CORPORA = {"pydoc": _pydoc}


def load_corpus(spec: str, field: str = "text") -> Corpus:
    """`builtin:pydoc`, a .txt / .jsonl path, or `hf:DATASET[:CONFIG]`."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_CORPORA:
            raise NotFoundError(f"unknown built-in corpus {spec!r}",
                                f"use one of: {', '.join('builtin:' + n for n in BUILTIN_CORPORA)}")
        return BUILTIN_CORPORA[name]()
    if spec.startswith("hf:"):
        return _hf_dataset(spec, field)
    path = Path(spec).expanduser()
    if not path.exists():
        raise NotFoundError(f"data file {path} does not exist", "check the path, or use --data builtin:pydoc")
    if path.is_dir():
        raise DataError(f"{path} is a directory", "pass a .txt or .jsonl file")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty", "pass a file with some text in it")
    if path.suffix == ".jsonl":
        return _jsonl_file(path, field)
    if path.suffix in {".txt", ".md", ".text"}:
        return _text_file(path)
    raise DataError(f"unsupported data file type {path.suffix!r} ({path})", "use .txt or .jsonl, or hf:DATASET")
