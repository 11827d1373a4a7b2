"""A labeled text-classification set from Debian's `fortunes` category files.

Each file under /usr/share/games/fortunes is one category of quotes separated by `%` lines.
We take a fixed subset of the largest topical categories (grab-bag files such as `cookie`
and `miscellaneous` are left out), de-duplicate, and split by a stable hash of the text
(80 % train / 20 % test), so the split never depends on file order or a random seed.

The multi-label variant joins pairs of fortunes from different categories into one item
labeled with both (and keeps the rest single), giving a Jaccard-scored task.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from llmpress.errors import DataError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# The six largest topical categories in fortunes 1:1.99.1 (people 1250 ... politics 703 items).
CATEGORIES: tuple[str, ...] = ("people", "definitions", "computers", "songs-poems", "politics", "science")
INSTALL_FIX = "run `make install` (it runs `apt-get install -y fortunes fortunes-min`)"


@dataclass
class LabeledSet:
    """Texts with label ids; `multi_label` items carry a list of ids, single-label items one id."""

    name: str
    labels: list[str]
    multi_label: bool = False
    train_texts: list[str] = field(default_factory=list)
    train_labels: list[int | list[int]] = field(default_factory=list)
    test_texts: list[str] = field(default_factory=list)
    test_labels: list[int | list[int]] = field(default_factory=list)
    # in-domain texts outside train and test with their labels dropped (a distillation transfer set)
    unlabeled_texts: list[str] = field(default_factory=list)

    def one_hot(self, labels: int | list[int]) -> list[float]:
        ids = labels if isinstance(labels, list) else [labels]
        return [1.0 if i in ids else 0.0 for i in range(len(self.labels))]


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


def read_category(name: str, root: Path = FORTUNES_DIR) -> list[str]:
    """The fortunes of one category file, whitespace-normalised, de-duplicated, in file order."""
    path = root / name
    if not root.is_dir():
        raise DataError(f"the fortunes data directory {root} does not exist", INSTALL_FIX)
    if not path.is_file():
        raise DataError(f"the fortunes category {name!r} is not installed ({path} missing)", INSTALL_FIX)
    raw = path.read_text(encoding="utf-8", errors="replace")
    seen: set[str] = set()
    out: list[str] = []
    for chunk in raw.split("\n%\n"):
        text = " ".join(chunk.replace("\n%", "").split())
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def load_fortunes(categories: tuple[str, ...] = CATEGORIES, per_category: int | None = None,
                  multi_label: bool = False, test_pct: int = 20, root: Path = FORTUNES_DIR,
                  unlabeled_per_category: int = 0) -> LabeledSet:
    """The fixed fortunes classification set. `per_category` caps items per class (hash order).

    `unlabeled_per_category` more items per class, the next ones in hash order after the cap, are
    returned as `unlabeled_texts` without labels; any text that is also in train or test is left out."""
    if len(categories) < 2:
        raise DataError("a classification set needs at least two categories", "pass two or more categories")
    ds = LabeledSet(name="fortunes" + ("-multilabel" if multi_label else ""), labels=list(categories),
                    multi_label=multi_label)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    taken: set[str] = set()
    extra: list[str] = []
    for label, cat in enumerate(categories):
        items = sorted((t for t in read_category(cat, root) if t not in taken), key=_h)
        if per_category is not None:
            extra.extend(items[per_category:per_category + unlabeled_per_category])
            items = items[:per_category]
        if not items:
            raise DataError(f"the fortunes category {cat!r} is empty", INSTALL_FIX)
        taken.update(items)
        for t in items:
            (test if _h("split:" + t) % 100 < test_pct else train).append((t, label))
    for split, rows in (("train", train), ("test", test)):
        rows.sort(key=lambda r: _h(r[0]))
        texts: list[str] = []
        labels: list[int | list[int]] = []
        if multi_label:
            i = 0
            while i < len(rows):
                a = rows[i]
                b = rows[i + 1] if i + 1 < len(rows) else None
                if b is not None and a[1] != b[1] and (i // 2) % 2 == 0:
                    texts.append(a[0] + "\n\n" + b[0])
                    labels.append(sorted([a[1], b[1]]))
                    i += 2
                else:
                    texts.append(a[0])
                    labels.append([a[1]])
                    i += 1
        else:
            texts = [r[0] for r in rows]
            labels = [r[1] for r in rows]
        setattr(ds, f"{split}_texts", texts)
        setattr(ds, f"{split}_labels", labels)
    ds.unlabeled_texts = sorted({t for t in extra if t not in taken}, key=_h)
    return ds
