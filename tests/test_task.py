"""Task metrics on tiny-llama: multiple choice scored as lm-evaluation-harness does, generation matches,
bad task files named by line, the CLI recording the task section."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def loaded(tiny):
    return tiny.load_model(), tiny.load_tokenizer()


def test_choice_loglikelihood_is_the_sum_of_continuation_logprobs(loaded):
    """The scored number equals log p(continuation tokens | query) from one unpadded forward."""
    import torch

    from llmpress.evaluate.task import choice_loglikelihoods

    model, tok = loaded
    query, choices = "The opposite of hot is", ["cold", "a very long answer about temperature"]
    got = choice_loglikelihoods(model, tok, query, choices)
    for choice, value in zip(choices, got, strict=True):
        ctx = tok(query, add_special_tokens=False)["input_ids"]
        whole = tok(query + " " + choice, add_special_tokens=False)["input_ids"]
        cont = whole[len(ctx):]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
        want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
        assert math.isclose(value, want, rel_tol=1e-4, abs_tol=1e-3)
    assert got[1] < got[0]  # more tokens, more negative log-probability


def test_multiple_choice_accuracy_matches_argmax(loaded, tmp_path):
    from llmpress.evaluate.task import TaskConfig, choice_loglikelihoods, run_task

    model, tok = loaded
    items = [{"query": f"Question {i}: pick one.", "choices": ["alpha", "beta", "gamma delta"], "gold": i % 3}
             for i in range(6)]
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in items) + "\n")
    res = run_task(model, tok, TaskConfig(str(path)))
    want = want_norm = 0
    for r in items:
        ll = choice_loglikelihoods(model, tok, r["query"], r["choices"])
        norm = [v / len(c.encode()) for v, c in zip(ll, r["choices"], strict=True)]
        want += ll.index(max(ll)) == r["gold"]
        want_norm += norm.index(max(norm)) == r["gold"]
    assert res["kind"] == "multiple_choice" and res["items"] == 6
    assert res["acc"] == want / 6 and res["acc_norm"] == want_norm / 6 and res["score"] == res["acc"]
    assert math.isclose(res["chance"], 1 / 3)


def test_generation_match_rules(loaded, tmp_path):
    """The greedy output itself as the answer scores 1 on every rule; a wrong answer scores 0."""
    from llmpress.evaluate.task import TaskConfig, _greedy, normalize_answer, run_task

    model, tok = loaded
    prompts = ["Once upon a time", "def main():"]
    outs = [o.split("\n")[0] for o in _greedy(model, tok, prompts, 6)]
    assert all(o.strip() for o in outs), outs
    path = tmp_path / "gen.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "answer": o}) for p, o in zip(prompts, outs, strict=True))
                    + "\n" + json.dumps({"prompt": "2+2=", "answer": "zzzz-not-it"}) + "\n")
    res = run_task(model, tok, TaskConfig(str(path), max_new_tokens=6))
    assert res["kind"] == "generate" and res["items"] == 3
    assert res["exact"] == pytest.approx(2 / 3) and res["normalized"] == pytest.approx(2 / 3)
    assert res["contains"] == pytest.approx(2 / 3) and res["metric"] == "normalized"
    assert normalize_answer("The  Answer, is: 42!") == "answer is 42"


def test_builtin_tasks_load():
    from llmpress.data.tasks import MCItem, load_task_data

    mc = load_task_data("builtin:pydoc-mc")
    assert mc.kind == "multiple_choice" and len(mc.items) > 50
    for it in mc.items:
        assert isinstance(it, MCItem) and len(it.choices) == 4 and len(set(it.choices)) == 4
    golds = {it.gold for it in mc.items}
    assert golds == {0, 1, 2, 3}  # the right answer is not always in one place
    fc = load_task_data("builtin:fortunes-cls")
    assert fc.kind == "multiple_choice" and len(fc.items) > 30 and len(fc.items[0].choices) == 6


@pytest.mark.parametrize("content, needle", [
    ("", "is empty"),
    ('{"prompt": "a", "answer": "b"}\n{"prompt": "c"\n', ":2: not valid JSON"),
    ('{"prompt": "a", "answer": "b"}\n\n{"prompt": "c", "answer": ""}\n', ":3: a generation record needs"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 2}\n', ":1: field 'gold'"),
    ('{"query": "q", "choices": ["a"], "gold": 0}\n', ":1: field 'choices'"),
    ('{"text": "x"}\n', ":1: record has neither"),
    ('{"prompt": "a", "answer": "b"}\n{"query": "q", "choices": ["a", "b"], "gold": 0}\n', "mixes"),
    ("\n\n", "has no records"),
])
def test_bad_task_files_are_named(tmp_path, content, needle):
    from llmpress.data.tasks import load_task_data
    from llmpress.errors import DataError

    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as e:
        load_task_data(str(path))
    assert needle in e.value.one_line()


def test_unknown_specs_are_clear(tmp_path):
    from llmpress.errors import ConfigError, NotFoundError
    from llmpress.evaluate.task import check_task

    with pytest.raises(NotFoundError, match="unknown built-in task"):
        check_task("builtin:nope")
    with pytest.raises(NotFoundError, match="does not exist"):
        check_task(str(tmp_path / "missing.jsonl"))
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="lm-evaluation-harness"):
            check_task("lm-eval:hellaswag")


def test_eval_cli_task_is_recorded(tiny, tmp_path):
    from llmpress.cli.main import _register_all, app
    from llmpress.registry import get_registry

    _register_all()
    res = CliRunner().invoke(app, ["eval", "builtin:tiny-llama", "--no-speed", "--no-quality", "--task",
                                   "builtin:pydoc-mc", "--task-limit", "4", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["task"]["items"] == 4 and 0 <= data["task"]["score"] <= 1
    evs = [e for e in get_registry().evaluations(tiny.id) if e.kind == "task"]
    assert evs and evs[-1].dataset == "builtin:pydoc-mc" and evs[-1].metrics["score"] == data["task"]["score"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 1, "answer": "x"}\n')
    res = CliRunner().invoke(app, ["eval", "builtin:tiny-llama", "--no-speed", "--task", str(bad)])
    assert res.exit_code != 0 and "bad.jsonl:1" in res.output


@pytest.mark.slow
def test_smollm2_beats_chance_on_pydoc_mc(smollm2):
    """A real model scores the built-in multiple-choice task above chance (the scoring is not noise)."""
    from llmpress.evaluate.task import TaskConfig, run_task

    res = run_task(smollm2.load_model(), smollm2.load_tokenizer(), TaskConfig("builtin:pydoc-mc", limit=24))
    assert res["acc"] > res["chance"] + 0.15, res


@pytest.mark.parametrize("command", [["bench", "builtin:tiny-llama", "builtin:tiny-llama"],
                                     ["optimize", "builtin:tiny-llama", "--recipes", "int8-weight-only"],
                                     ["optimize", "builtin:tiny-llama", "--search", "--budget-minutes", "1"]])
def test_bad_task_fails_before_any_work(tmp_path, command):
    from llmpress.cli.main import _register_all, app

    _register_all()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": "q", "choices": ["a", "b"]}\n')
    res = CliRunner().invoke(app, [*command, "--task", str(bad), "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "bad.jsonl:2: field 'gold'" in res.output, res.output
    assert not (tmp_path / "out").exists()
