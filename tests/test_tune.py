"""Tuning on the tiny model: every method lowers the loss, adapters load on their base only,
LoRA merges exactly, Ctrl-C leaves a resumable checkpoint, bad data leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from llmpress.errors import ConfigError, DataError
from llmpress.tune.config import TrainConfig

FAST = dict(max_steps=5, batch_size=2, seq_len=48, eval_every=1000, max_eval=4, bf16="off")
LRS = {"full": 1e-3, "lora": 5e-3, "adapter": 5e-3, "prompt": 5e-2}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    """A toy instruction set every method can learn in a few steps: always the same answer."""
    path = tmp_path_factory.mktemp("toy") / "toy.jsonl"
    with path.open("w") as f:
        for i in range(32):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Name three fruits, please ({i})."},
                                             {"role": "assistant", "content": "banana apple cherry"}]}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tuned(tiny, toy):
    """One artifact per method, trained once for the module."""
    from llmpress.tune.run import tune_artifact

    params = {"prompt": {"num_virtual_tokens": 4, "init_text": "fruit names"}}
    return {m: tune_artifact(tiny, m, toy, params.get(m, {}), TrainConfig(lr=LRS[m], **FAST))
            for m in ("lora", "prompt", "adapter", "full")}


@pytest.mark.parametrize("method", ["lora", "prompt", "adapter", "full"])
def test_each_method_lowers_eval_loss_and_records_it(tuned, tiny, method):
    art = tuned[method]
    m = art.manifest.metrics["tune"]
    assert m["eval_loss_after"] < m["eval_loss_before"] - 0.05
    assert m["steps"] == FAST["max_steps"] and m["steps_per_s"] > 0 and m["peak_rss_mb"] > 0
    assert 0 < m["trainable_params"] <= m["total_params"]
    assert (m["trainable_pct"] == 100.0) == (method == "full")
    assert len(m["train_curve"]) == FAST["max_steps"] and m["eval_curve"][0][1] == pytest.approx(m["eval_loss_before"], abs=1e-4)
    assert (art.path / "loss_curves.png").stat().st_size > 1000
    assert art.manifest.parent == tiny.id
    assert art.manifest.format == ("hf" if method == "full" else "adapter")
    from llmpress.registry import get_registry

    assert get_registry().get(art.id).metrics["tune"]["eval_loss_after"] == m["eval_loss_after"]


def _loss(model, tok) -> float:
    import torch

    ids = tok.apply_chat_template([{"role": "user", "content": "Name three fruits, please (99)."},
                                   {"role": "assistant", "content": "banana apple cherry"}], tokenize=True)["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss)


@pytest.mark.parametrize("method", ["lora", "prompt", "adapter"])
def test_adapter_artifact_loads_on_its_base(tuned, tiny, method):
    from llmpress.artifact import Artifact

    art = Artifact.open(tuned[method].path)
    tok = art.load_tokenizer()
    assert _loss(art.load_model(), tok) < _loss(tiny.load_model(), tok)


def test_merged_lora_logits_equal_unmerged(tuned):
    import torch

    from llmpress.tune.adapters import merge_adapter

    lora = tuned["lora"]
    merged = merge_adapter(lora)
    assert merged.manifest.format == "hf" and merged.manifest.parent == lora.id
    x = torch.tensor([lora.load_tokenizer()("banana apple cherry and more fruit")["input_ids"]])
    unmerged_model = lora.load_model()
    with torch.no_grad():
        a = unmerged_model(input_ids=x).logits
        b = merged.load_model()(input_ids=x).logits
        base = unmerged_model.get_base_model
        with unmerged_model.disable_adapter():
            c = unmerged_model(input_ids=x).logits
    assert base is not None
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3)  # the adapter really changes the output


def test_prompt_adapter_cannot_merge(tuned):
    from llmpress.tune.adapters import merge_adapter

    with pytest.raises(ConfigError, match="prompt-tuning adapter"):
        merge_adapter(tuned["prompt"])


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory):
    """A Llama of another shape (hidden 64): an adapter of tiny-llama cannot fit it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmpress.artifact import Step, create_artifact
    from llmpress.sources import resolve
    from llmpress.sources.hf import save_model

    tok = resolve("builtin:tiny-llama").load_tokenizer()
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    with create_artifact("other-tiny", Step("test")) as w:
        save_model(model, tok, w.path)
    return w.artifact


def test_adapter_on_wrong_base_is_a_clear_error(tuned, other_tiny):
    from llmpress.tune.adapters import load_adapter

    for wrong in (other_tiny, tuned["full"]):  # other shape; same shape but other weights
        with pytest.raises(ConfigError, match=r"was trained on base 'tiny-llama'.*is a different model") as e:
            load_adapter(tuned["lora"], base=wrong)
        assert e.value.fix and wrong.name in e.value.message
    assert load_adapter(tuned["lora"]) is not None  # without a base: its recorded parent


def test_recipe_lora_then_prompt(tiny, toy):
    from llmpress.tune.recipes import load_recipe, run_recipe

    steps = [dict(s, **({"num_virtual_tokens": 4} if s["method"] == "prompt" else {}),
                  lr=LRS[s["method"]]) for s in load_recipe("lora+prompt")]
    made = run_recipe(tiny, steps, toy, TrainConfig(**{**FAST, "max_steps": 2}))
    lora, prompt = made
    assert lora.manifest.parent == tiny.id and prompt.manifest.parent == lora.id
    assert prompt.manifest.step.params["method"] == "prompt" and prompt.manifest.format == "adapter"
    tok = prompt.load_tokenizer()
    assert _loss(prompt.load_model(), tok) < _loss(tiny.load_model(), tok)


def test_recipe_rejects_prompt_before_other_steps(tmp_path):
    from llmpress.tune.recipes import load_recipe

    bad = tmp_path / "r.yaml"
    bad.write_text("- method: prompt\n- method: lora\n")
    with pytest.raises(ConfigError, match="not the last step"):
        load_recipe(str(bad))
    bad.write_text("- method: lora\n  rank: 4\n")
    with pytest.raises(ConfigError, match="unknown option"):
        load_recipe(str(bad))


def _artifact_dirs() -> set[str]:
    from llmpress.artifact import artifacts_dir

    return {p.name for p in artifacts_dir().iterdir()}


def test_bad_data_leaves_nothing(tiny, tmp_path):
    from llmpress.registry import get_registry
    from llmpress.tune.run import tune_artifact

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    before, rows = _artifact_dirs(), len(get_registry().list())
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        tune_artifact(tiny, "lora", str(bad), {}, TrainConfig(**FAST))
    assert _artifact_dirs() == before and len(get_registry().list()) == rows


def test_bad_method_options_are_config_errors(tiny, toy):
    from llmpress.tune.run import parse_method_options, tune_artifact

    with pytest.raises(ConfigError, match="unknown tuning method"):
        tune_artifact(tiny, "qlora", toy)
    with pytest.raises(ConfigError, match="do not match this model"):
        tune_artifact(tiny, "lora", toy, {"target_modules": ["no_such_proj"]}, TrainConfig(**FAST))
    with pytest.raises(ConfigError, match="--init-text"):
        parse_method_options("lora", {"init_text": "x"})


def test_ctrl_c_saves_checkpoint_and_resume_finishes(tiny, toy):
    from transformers import TrainerCallback

    from llmpress.tune.run import runs_dir, tune_artifact
    from llmpress.tune.trainer import TrainingInterrupted

    class CtrlCAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    cfg = dict(FAST, max_steps=4)
    before = _artifact_dirs()
    with pytest.raises(TrainingInterrupted, match="checkpoint saved") as e:
        tune_artifact(tiny, "adapter", toy, {}, TrainConfig(**cfg), extra_callbacks=[CtrlCAtStep2()])
    assert "--resume" in e.value.fix and e.value.exit_code == 130 and _artifact_dirs() == before
    ckpts = list(runs_dir().glob("adapter-*/checkpoint-3"))
    assert len(ckpts) == 1
    art = tune_artifact(tiny, "adapter", toy, {}, TrainConfig(**cfg), resume=True)
    m = art.manifest.metrics["tune"]
    assert m["steps"] == 4 and [s for s, _ in m["train_curve"]] == [1, 2, 3, 4]
    assert not ckpts[0].parent.exists()  # finished: the resume checkpoint is cleaned up


def test_resume_without_checkpoint_is_clear(tiny, toy):
    from llmpress.errors import NotFoundError
    from llmpress.tune.run import tune_artifact

    with pytest.raises(NotFoundError, match="no checkpoint to resume"):
        tune_artifact(tiny, "lora", toy, {"r": 2}, TrainConfig(**FAST), resume=True)


def test_cli_lora_then_merge(tiny, toy):
    from typer.testing import CliRunner

    from llmpress.cli.main import _register_all, app

    _register_all()
    r = CliRunner().invoke(app, ["tune", "lora", "builtin:tiny-llama", "--data", toy, "--max-steps", "2",
                                 "--seq-len", "48", "--r", "4", "--bf16", "off", "--json"])
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout[r.stdout.index("{"):])
    assert made["format"] == "adapter" and made["parent"] == tiny.id
    assert made["metrics"]["tune"]["trainable_params"] > 0
    r = CliRunner().invoke(app, ["tune", "merge", made["id"], "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["parent"] == made["id"]
    r = CliRunner().invoke(app, ["tune", "lora", "builtin:tiny-llama", "--data", str(Path(toy).parent / "nope.jsonl")])
    assert r.exit_code == 2 and "does not exist" in r.output
