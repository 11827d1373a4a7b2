"""Check an export against its source: the same prompts through the source model (torch) and
through the exported files in their runtime; logits compared position by position, greedy
continuations token by token."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from llmpress.artifact import Artifact
from llmpress.engine.backends.base import RuntimeLM
from llmpress.export.base import ExportError

# fp32 exports must reproduce the source's logits to this absolute tolerance (float32 kernels
# differ in summation order; a wrong layout — e.g. q/k rows not permuted — differs by O(1)).
EXACT_ATOL = 2e-2


def probe_prompts(tokenizer: Any, n: int, length: int) -> list[list[int]]:
    """`n` deterministic prompts of `length` tokens: consecutive slices of the pydoc eval text."""
    from llmpress.data import load_corpus

    text = " ".join(load_corpus("builtin:pydoc").eval)
    ids = tokenizer(text[: 8 * n * length + 2000], add_special_tokens=False)["input_ids"]
    return [ids[i * length : (i + 1) * length] for i in range(n)]


def source_outputs(model: Any, prompts: list[list[int]], new_tokens: int) -> tuple[list[np.ndarray], list[list[int]]]:
    """Logits of each prompt and its greedy continuation, from the torch model (no cache: exact and simple)."""
    import torch

    logits, conts = [], []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            logits.append(model(input_ids=ids).logits[0].float().numpy())
            out: list[int] = []
            for _ in range(new_tokens):
                nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            conts.append(out)
    return logits, conts


def compare(runtime: RuntimeLM, src: Artifact, exact: bool, prompts: int = 2, prompt_tokens: int = 16,
            new_tokens: int = 8) -> dict[str, Any]:
    """Run both; for an `exact` export raise ExportError when logits differ beyond EXACT_ATOL."""
    import torch

    tok = src.load_tokenizer()
    model = src.load_model(dtype=torch.float32)
    ps = probe_prompts(tok, prompts, prompt_tokens)
    ref_logits, ref_conts = source_outputs(model, ps, new_tokens)
    del model
    diffs, agree, total = [], 0, 0
    for p, ref in zip(ps, ref_logits, strict=True):
        got = runtime.logits(p)
        diffs.append(float(np.abs(got - ref).max()))
        agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
        total += len(p)
    conts = [runtime.greedy([p], new_tokens)[0] for p in ps]  # one by one: exact argmax, EOS included
    same = sum(int(a == b) for a, b in zip(conts, ref_conts, strict=True))
    facts = {"runtime": runtime.runtime, "prompts": len(ps), "prompt_tokens": prompt_tokens,
             "max_abs_logit_diff": max(diffs), "top1_agreement": agree / total,
             "greedy_tokens": new_tokens, "greedy_identical": same, "exact": exact}
    if exact and max(diffs) > EXACT_ATOL:
        raise ExportError(f"the {runtime.runtime} export does not reproduce its source: max logit difference "
                          f"{max(diffs):.3g} > {EXACT_ATOL}", "report this as a bug; nothing was written")
    return facts


def manifest_stub(facts: dict[str, Any]) -> Any:
    """What a runtime loader reads from a manifest, before the manifest exists (inside the temp dir)."""
    return SimpleNamespace(extra={"export": facts})


def count_source_params(src: Artifact) -> int:
    """Logical parameters of the source from its safetensors headers (a packed int4 tensor counts as stored)."""
    from safetensors import safe_open

    n = 0
    for f in sorted(src.path.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open has keys(), not __iter__
                n += int(np.prod(st.get_slice(k).get_shape()))
    return n
