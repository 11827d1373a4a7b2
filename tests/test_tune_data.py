"""Fine-tuning data: chat rendering with prompt masking, labeled sets, splits, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmpress.data.finetune import IGNORE, load_finetune_data, read_records
from llmpress.errors import DataError, NotFoundError


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny.load_tokenizer()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Question number {i}?"},
                         {"role": "assistant", "content": f"Answer {i} is forty two."}]}


def test_instruction_loss_only_on_assistant_tokens(tmp_path, tok):
    data = load_finetune_data(str(write_jsonl(tmp_path / "c.jsonl", [chat(i) for i in range(12)])), tok, 128)
    assert data.kind == "instruction" and data.train and data.eval
    for ex in data.train + data.eval:
        target = tok.decode([t for t in ex.labels if t != IGNORE])
        prompt = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab == IGNORE])
        assert "forty two" in target and "Question" not in target and "user" not in target
        assert "Question number" in prompt and "forty two" not in prompt


def test_multi_turn_masks_every_non_assistant_turn(tmp_path, tok):
    rec = {"messages": [{"role": "user", "content": "first q"}, {"role": "assistant", "content": "first a"},
                        {"role": "user", "content": "second q"}, {"role": "assistant", "content": "second a"}]}
    data = load_finetune_data(str(write_jsonl(tmp_path / "m.jsonl", [rec, chat(1), chat(2)])), tok, 256)
    ex = next(e for e in data.train + data.eval if "first" in tok.decode(e.input_ids))
    target = tok.decode([t for t in ex.labels if t != IGNORE])
    assert "first a" in target and "second a" in target and "q" not in target.replace("<|im_end|>", "")


def test_classification_loss_only_on_label(tmp_path, tok):
    recs = [{"text": f"review {i}: {'great' if i % 2 else 'awful'} film", "label": "pos" if i % 2 else "neg"}
            for i in range(20)]
    data = load_finetune_data(str(write_jsonl(tmp_path / "l.jsonl", recs)), tok, 64)
    assert data.kind == "classification" and data.label_set == ["neg", "pos"]
    for ex in data.train:
        assert tok.decode([t for t in ex.labels if t != IGNORE]).strip() in {"pos<|im_end|>", "neg<|im_end|>"}


def test_split_is_deterministic_and_disjoint(tmp_path, tok):
    path = str(write_jsonl(tmp_path / "c.jsonl", [chat(i) for i in range(40)]))
    a, b = load_finetune_data(path, tok, 64), load_finetune_data(path, tok, 64)
    assert [e.input_ids for e in a.eval] == [e.input_ids for e in b.eval]
    assert len(a.train) + len(a.eval) == 40 and 0 < len(a.eval) < 20
    assert not {tuple(e.input_ids) for e in a.eval} & {tuple(e.input_ids) for e in a.train}


def test_text_and_builtin_sets(tmp_path, tok):
    txt = tmp_path / "t.txt"
    txt.write_text("\n\n".join(f"Paragraph {i} about apples and pears and more fruit." for i in range(30)))
    data = load_finetune_data(str(txt), tok, 32)
    assert data.kind == "causal_lm" and data.train and data.eval and data.train[0].labels == data.train[0].input_ids
    kind, recs = read_records("builtin:pydoc-instruct")
    assert kind == "instruction" and len(recs) > 50
    assert recs[0][1]["messages"][0]["content"].startswith("Explain the Python topic")


def test_empty_file_is_a_clear_error(tmp_path, tok):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_finetune_data(str(tmp_path / "e.jsonl"), tok)
    (tmp_path / "b.jsonl").write_text("\n\n  \n")
    with pytest.raises(DataError, match="no records"):
        load_finetune_data(str(tmp_path / "b.jsonl"), tok)
    with pytest.raises(NotFoundError):
        load_finetune_data(str(tmp_path / "missing.jsonl"), tok)


@pytest.mark.parametrize("bad, message", [
    ('{"messages": [oops', r"b\.jsonl:3: not valid JSON"),
    ('{"prompt": "x"}', r"b\.jsonl:3: record has none of the fields"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', r"b\.jsonl:3: no assistant message"),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', r"b\.jsonl:3: message 0 has unknown role"),
    ('{"text": "x", "label": "y"}', r"b\.jsonl:3: a classification record in a file whose first record is instruction"),
    ('[1, 2]', r"b\.jsonl:3: a record must be a JSON object"),
])
def test_malformed_line_is_named(tmp_path, tok, bad, message):
    path = write_jsonl(tmp_path / "b.jsonl", [chat(0), chat(1), bad, chat(3)])
    with pytest.raises(DataError, match=message) as e:
        load_finetune_data(str(path), tok)
    assert e.value.fix


def test_label_lists_are_for_distill_not_tune(tmp_path, tok):
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": ["x", "y"]}])
    assert len(read_records(str(path))[1]) == 2  # a well-formed multi-label record
    with pytest.raises(DataError, match=r"m\.jsonl:2: a list of labels") as e:
        load_finetune_data(str(path), tok)
    assert "llmpress distill" in (e.value.fix or "")
    bad = write_jsonl(tmp_path / "e.jsonl", [{"text": "a", "label": []}])
    with pytest.raises(DataError, match=r"e\.jsonl:1: 'label' must be"):
        read_records(str(bad))
