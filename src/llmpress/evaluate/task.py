"""Task metrics: judge a model on the user's own task, not only on perplexity.

Generation items (`{"prompt", "answer"}`) are answered greedily (stop at the first newline) and
scored by exact, contains and normalised match. Multiple-choice items (`{"query", "choices",
"gold"}`) are scored as lm-evaluation-harness scores them: each choice is the continuation
" " + choice of the query, its loglikelihood is the sum of its tokens' log-probabilities, `acc`
takes the argmax, `acc_norm` the argmax of the sum divided by the choice's length in bytes.
`lm-eval:TASK` runs an lm-evaluation-harness task through its Python API on the in-memory model.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmpress.data.tasks import GenItem, MCItem, TaskData, load_task_data
from llmpress.errors import ConfigError, LlmpressError

__all__ = ["TaskConfig", "run_task", "normalize_answer", "choice_loglikelihoods", "MATCHES"]

MATCHES = ("exact", "contains", "normalized")


@dataclass
class TaskConfig:
    """Which task, how many items, and (generation) the primary match rule and output length."""

    spec: str
    limit: int | None = None
    match: str = "normalized"
    max_new_tokens: int = 32

    def validate(self) -> TaskConfig:
        if not self.spec or not self.spec.strip():
            raise ConfigError("--task is empty", "pass a .jsonl file, builtin:pydoc-mc or lm-eval:TASK")
        if self.match not in MATCHES:
            raise ConfigError(f"unknown match rule {self.match!r}", f"use one of {', '.join(MATCHES)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"task limit {self.limit} is not positive", "pass --task-limit 1 or more")
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1", "pass a positive number")
        return self


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completions through the engine's offline API; the HF loop for models it does not serve."""
    try:
        from llmpress.engine import LLM, SamplingParams

        llm = LLM.from_model(model, tokenizer, enable_prefix_caching=False)
        outs = llm.generate(prompts, SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop=["\n"]))
        return [o.text for o in outs]
    except (ImportError, LlmpressError):
        pass
    import torch

    texts = []
    with torch.inference_mode():
        for p in prompts:
            ids = tokenizer(p, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            texts.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def _score_generation(model: Any, tokenizer: Any, items: list[GenItem], cfg: TaskConfig,
                      on_progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    outputs: list[str] = []
    step = 16
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        outputs += _greedy(model, tokenizer, [i.prompt for i in chunk], cfg.max_new_tokens)
        if on_progress:
            on_progress(min(start + step, len(items)), len(items))
    hits = {m: 0 for m in MATCHES}
    examples = []
    for item, out in zip(items, outputs, strict=True):
        first = out.split("\n")[0]
        got = {"exact": first.strip() == item.answer.strip(),
               "contains": normalize_answer(item.answer) in normalize_answer(out),
               "normalized": normalize_answer(first) == normalize_answer(item.answer)}
        for m, ok in got.items():
            hits[m] += int(ok)
        if len(examples) < 5:
            examples.append({"prompt": item.prompt[-200:], "answer": item.answer, "output": first[:200]})
    n = len(items)
    res: dict[str, Any] = {m: hits[m] / n for m in MATCHES}
    res.update(metric=cfg.match, score=res[cfg.match], examples=examples)
    return res


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split: trailing spaces of the context move to the continuation, the pair
    is encoded whole and the continuation is what follows the context's own tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    if not ctx:  # empty context: condition on the end-of-text token, as the harness does
        eot = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        return [eot], whole
    return ctx, whole[len(ctx):]


def choice_loglikelihoods(model: Any, tokenizer: Any, query: str, choices: tuple[str, ...] | list[str],
                          delimiter: str = " ") -> list[float]:
    """Sum of the log-probabilities of each choice's tokens after the query (one padded forward)."""
    import torch

    max_len = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    rows: list[tuple[list[int], int]] = []  # (full token ids, continuation length)
    for choice in choices:
        ctx, cont = _encode_pair(tokenizer, query, delimiter + choice)
        if not cont:
            raise ConfigError(f"choice {choice!r} encodes to no tokens after the query", "fix the task file")
        rows.append(((ctx + cont)[-(max_len + 1):], len(cont)))
    width = max(len(r[0]) for r in rows) - 1  # the last token is only a target
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (full, _n) in enumerate(rows):
        batch[i, :len(full) - 1] = torch.tensor(full[:-1])
        mask[i, :len(full) - 1] = 1
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=batch, attention_mask=mask).logits.float(), dim=-1)
    out = []
    for i, (full, n) in enumerate(rows):
        # logits at position p predict token p + 1: the continuation's tokens are full[-n:]
        pos = torch.arange(len(full) - 1 - n, len(full) - 1)
        out.append(float(logp[i, pos, torch.tensor(full[-n:])].double().sum()))
    return out


def _score_multiple_choice(model: Any, tokenizer: Any, items: list[MCItem],
                           on_progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    model.eval()
    acc = acc_norm = 0
    chance = 0.0
    for n, item in enumerate(items, 1):
        ll = choice_loglikelihoods(model, tokenizer, item.query, item.choices)
        norm = [v / max(1, len(c.encode("utf-8"))) for v, c in zip(ll, item.choices, strict=True)]
        acc += int(max(range(len(ll)), key=ll.__getitem__) == item.gold)
        acc_norm += int(max(range(len(norm)), key=norm.__getitem__) == item.gold)
        chance += 1.0 / len(item.choices)
        if on_progress and (n % 8 == 0 or n == len(items)):
            on_progress(n, len(items))
    k = len(items)
    return {"acc": acc / k, "acc_norm": acc_norm / k, "chance": chance / k, "metric": "acc", "score": acc / k}


def _lm_eval(model: Any, tokenizer: Any, name: str, limit: int | None) -> dict[str, Any]:
    """An lm-evaluation-harness task on the in-memory model (its HFLM wrapper accepts a live model)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise ConfigError(f"task lm-eval:{name} needs lm-evaluation-harness, which is not installed",
                          "pip install 'lm-eval>=0.4', or use a .jsonl task file / builtin:pydoc-mc") from e
    try:
        res = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1),
                                      tasks=[name], limit=limit)
    except Exception as e:  # noqa: BLE001 - the harness raises many classes (unknown task, dataset offline)
        raise ConfigError(f"lm-evaluation-harness could not run task {name!r}: {str(e).splitlines()[0][:200]}",
                          "check the task name (lm-eval --tasks list) and that its dataset is available offline") from e
    metrics = {k.split(",")[0]: float(v) for k, v in (res["results"].get(name) or {}).items()
               if isinstance(v, int | float) and not k.split(",")[0].endswith("_stderr")}
    if not metrics:
        raise ConfigError(f"lm-evaluation-harness returned no metrics for {name!r}", "check the task name")
    primary = next((m for m in ("acc_norm", "acc", "exact_match") if m in metrics), sorted(metrics)[0])
    return {**metrics, "metric": primary, "score": metrics[primary]}


def run_task(model: Any, tokenizer: Any, config: TaskConfig,
             on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score an already-loaded model on a task; returns {task, kind, items, metric, score, ...}."""
    config.validate()
    if config.spec.startswith("lm-eval:"):
        name = config.spec.removeprefix("lm-eval:")
        return {"task": config.spec, "kind": "lm-eval", "limit": config.limit,
                **_lm_eval(model, tokenizer, name, config.limit)}
    data: TaskData = load_task_data(config.spec)
    items = data.items[: config.limit] if config.limit else data.items
    if data.kind == "generate":
        res = _score_generation(model, tokenizer, items, config, on_progress)  # type: ignore[arg-type]
    else:
        res = _score_multiple_choice(model, tokenizer, items, on_progress)  # type: ignore[arg-type]
    return {"task": config.spec, "kind": data.kind, "items": len(items), "limit": config.limit, **res}


def check_task(spec: str, limit: int | None = None) -> str:
    """Fail fast (before any model is loaded) on a bad task spec; returns a one-line description."""
    TaskConfig(spec, limit=limit).validate()
    if spec.startswith("lm-eval:"):
        try:
            import lm_eval  # noqa: F401
        except ImportError as e:
            raise ConfigError(f"task {spec} needs lm-evaluation-harness, which is not installed",
                              "pip install 'lm-eval>=0.4', or use a .jsonl task file / builtin:pydoc-mc") from e
        return spec
    data = load_task_data(spec)
    n = min(len(data.items), limit) if limit else len(data.items)
    return f"{data.name}: {data.kind}, {n} items"
