"""Task files: labeled items a model is judged on, beyond perplexity.

Two record shapes, one per line of a .jsonl file:
  {"prompt": str, "answer": str}                    generation, scored on the greedy output
  {"query": str, "choices": [str, ...], "gold": int} multiple choice, scored by loglikelihood
Two built-in tasks come from offline data so the feature works out of the box:
  builtin:pydoc-mc      which Python documentation topic a passage comes from (4 choices)
  builtin:fortunes-cls  which fortunes category a quote belongs to (6 choices)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmpress.errors import DataError, NotFoundError

__all__ = ["GenItem", "MCItem", "TaskData", "load_task_data", "BUILTIN_TASKS"]


@dataclass(frozen=True)
class GenItem:
    prompt: str
    answer: str


@dataclass(frozen=True)
class MCItem:
    query: str
    choices: tuple[str, ...]
    gold: int


@dataclass
class TaskData:
    """A named list of items, all of one kind ("generate" or "multiple_choice")."""

    name: str
    kind: str
    items: list[GenItem | MCItem] = field(default_factory=list)
    description: str = ""


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


def _pydoc_mc() -> TaskData:
    """Each pydoc topic's opening passage (title removed); choices: its title and three others."""
    from pydoc_data.topics import topics

    titles: dict[str, str] = {}
    bodies: dict[str, str] = {}
    for key, text in sorted(topics.items()):
        lines = text.strip().splitlines()
        if len(lines) < 3 or not set(lines[1].strip()) <= {"*", "=", "-"}:
            continue
        body = " ".join(" ".join(lines[2:]).split())
        if len(body) < 80:
            continue
        titles[key] = lines[0].strip()
        bodies[key] = body[:320].rsplit(" ", 1)[0]
    keys = sorted(titles)
    items: list[GenItem | MCItem] = []
    for key in keys:
        others = sorted((k for k in keys if titles[k] != titles[key]), key=lambda k, key=key: _h(key + "|" + k))[:3]
        options = sorted([key, *others], key=lambda k, key=key: _h("order|" + key + k))
        items.append(MCItem(query=f"Passage from the Python documentation: {bodies[key]}\nSection title:",
                            choices=tuple(titles[k] for k in options), gold=options.index(key)))
    return TaskData("builtin:pydoc-mc", "multiple_choice", items,
                    "which Python documentation section a passage opens (4 choices, chance 25 %)")


def _fortunes_cls() -> TaskData:
    """The held-out fortunes quotes of six categories; choices: the six category names."""
    from llmpress.data.fortunes import load_fortunes

    ds = load_fortunes(per_category=60)
    items: list[GenItem | MCItem] = [
        MCItem(query=f"Quote: {text[:400]}\nTopic:", choices=tuple(ds.labels), gold=int(label))  # type: ignore[arg-type]
        for text, label in zip(ds.test_texts, ds.test_labels, strict=True)]
    return TaskData("builtin:fortunes-cls", "multiple_choice", items,
                    f"which fortunes category a quote is from ({len(ds.labels)} choices)")


BUILTIN_TASKS: dict[str, Callable[[], TaskData]] = {"pydoc-mc": _pydoc_mc, "fortunes-cls": _fortunes_cls}


def _record(path: Path, lineno: int, rec: object) -> GenItem | MCItem:
    where = f"{path}:{lineno}"
    if not isinstance(rec, dict):
        raise DataError(f"{where}: a task record must be a JSON object", 'write {"prompt", "answer"} or '
                        '{"query", "choices", "gold"}')
    if "prompt" in rec or "answer" in rec:
        p, a = rec.get("prompt"), rec.get("answer")
        if not isinstance(p, str) or not p or not isinstance(a, str) or not a.strip():
            raise DataError(f"{where}: a generation record needs non-empty string fields 'prompt' and 'answer'",
                            "fix that line")
        return GenItem(p, a)
    if "query" in rec or "choices" in rec:
        q, c, g = rec.get("query"), rec.get("choices"), rec.get("gold")
        if not isinstance(q, str):
            raise DataError(f"{where}: field 'query' must be a string", "fix that line")
        if not isinstance(c, list) or len(c) < 2 or not all(isinstance(x, str) and x for x in c):
            raise DataError(f"{where}: field 'choices' must be a list of at least two non-empty strings",
                            "fix that line")
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(c):
            raise DataError(f"{where}: field 'gold' must be the index of the right choice (0..{len(c) - 1})",
                            "fix that line")
        return MCItem(q, tuple(c), g)
    raise DataError(f"{where}: record has neither 'prompt'/'answer' nor 'query'/'choices'/'gold'",
                    "write one of the two task record shapes")


def _task_file(path: Path) -> TaskData:
    if path.suffix != ".jsonl":
        raise DataError(f"task file {path} is not a .jsonl file", 'write one JSON record per line in a .jsonl file')
    items: list[GenItem | MCItem] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"task file {path} is not UTF-8 text (byte {e.start})", "convert it to UTF-8") from e
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})", "fix or remove that line") from e
        items.append(_record(path, lineno, rec))
    if not items:
        raise DataError(f"task file {path} has no records", 'add lines like {"prompt": "2+2=", "answer": "4"}')
    kinds = {type(i) for i in items}
    if len(kinds) > 1:
        first_mc = next(n for n, i in enumerate(items) if isinstance(i, MCItem)) + 1
        raise DataError(f"task file {path} mixes generation and multiple-choice records (record {first_mc})",
                        "keep one record shape per file")
    kind = "generate" if isinstance(items[0], GenItem) else "multiple_choice"
    return TaskData(str(path), kind, items)


def load_task_data(spec: str) -> TaskData:
    """`builtin:NAME` or a .jsonl path -> its items (validated; errors name the line)."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_TASKS:
            raise NotFoundError(f"unknown built-in task {spec!r}",
                                f"use one of: {', '.join('builtin:' + n for n in BUILTIN_TASKS)}")
        return BUILTIN_TASKS[name]()
    path = Path(spec).expanduser()
    if not path.exists():
        raise NotFoundError(f"task file {path} does not exist",
                            "pass a .jsonl task file, builtin:pydoc-mc, builtin:fortunes-cls or lm-eval:TASK")
    if path.is_dir():
        raise DataError(f"task path {path} is a directory", "pass a .jsonl task file")
    if path.stat().st_size == 0:
        raise DataError(f"task file {path} is empty", 'add lines like {"prompt": "2+2=", "answer": "4"}')
    return _task_file(path)
