"""Corpora and windows: deterministic splits, file formats, exact token coverage."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmpress.data import load_corpus
from llmpress.data.windows import sliding_windows
from llmpress.errors import ConfigError, DataError, NotFoundError


def test_pydoc_splits_are_deterministic_and_disjoint() -> None:
    a, b = load_corpus("builtin:pydoc"), load_corpus("builtin:pydoc")
    assert a.eval == b.eval and a.train == b.train
    assert a.train and a.calibration and a.eval
    assert not set(a.eval) & set(a.train)
    assert sum(a.chars().values()) > 400_000


def test_local_files(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_text("\n\n".join(f"paragraph number {i} with some words" for i in range(50)))
    c = load_corpus(str(txt))
    assert len(c.train) + len(c.eval) + len(c.calibration) == 50
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(f'{{"body": "doc {i}"}}' for i in range(30)))
    assert load_corpus(str(jl), field="body").train
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        load_corpus(str(bad))
    empty = tmp_path / "e.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_corpus(str(empty))
    with pytest.raises(NotFoundError):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(NotFoundError):
        load_corpus("builtin:nothing")


def test_jsonl_missing_field_names_line(tmp_path: Path) -> None:
    jl = tmp_path / "a.jsonl"
    jl.write_text('{"text": "x"}\n{"body": "y"}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: no field 'text'"):
        load_corpus(str(jl))


@pytest.mark.parametrize(("n", "window", "stride"), [(10, 4, 2), (100, 16, 16), (37, 8, 3), (5, 16, 8)])
def test_windows_score_every_token_once(n: int, window: int, stride: int) -> None:
    ids = list(range(n))
    scored: list[int] = []
    for w in sliding_windows(ids, window, stride):
        assert len(w.ids) <= window and w.score_from >= 1
        scored += w.ids[w.score_from :]
    assert scored == list(range(1, n))


def test_bad_window() -> None:
    with pytest.raises(ConfigError):
        sliding_windows(list(range(10)), 4, 8)
    with pytest.raises(DataError):
        sliding_windows([1], 4, 2)
