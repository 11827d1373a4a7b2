"""Next-token choice from logits rows: penalties, temperature, top-k, top-p, min-p, seeds, logprobs.

Batched tensor ops over all rows; only seeded or non-greedy rows draw one sample each (a torch
generator per request makes seeded sampling reproducible regardless of batch neighbours).
"""

from __future__ import annotations

from typing import Any

import torch

from llmpress.engine.sequence import Sequence


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Repetition (HF/CTRL style, over prompt + output), presence and frequency (OpenAI, over output)."""
    for i, seq in enumerate(seqs):
        p = seq.params
        if not p.penalized:
            continue
        row = logits[i]
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long)
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        out = seq.output_ids
        if out and (p.presence_penalty or p.frequency_penalty):
            ids, counts = torch.tensor(out, dtype=torch.long).unique(return_counts=True)
            row[ids] -= p.frequency_penalty * counts.to(row.dtype) + p.presence_penalty
    return logits


def _filter(logits: torch.Tensor, seq: Sequence) -> torch.Tensor:
    """Temperature-scaled logits of one row with top-k / top-p / min-p masked to -inf."""
    p = seq.params
    x = logits / p.temperature
    if p.top_k > 0 and p.top_k < x.numel():
        kth = torch.topk(x, p.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.min_p > 0:
        probs = torch.softmax(x, -1)
        x = x.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    if p.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        cum = torch.softmax(sorted_x, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_x, -1) >= p.top_p  # keep the token that crosses top_p
        x = x.scatter(0, order, sorted_x.masked_fill(drop, float("-inf")))
    return x


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One token per row of `logits` ([N, vocab], float32), row i for seqs[i]."""
    if any(s.params.penalized for s in seqs):
        logits = apply_penalties(logits.clone(), seqs)
    greedy = logits.argmax(-1).tolist()
    for i, seq in enumerate(seqs):
        if seq.params.greedy:
            continue
        if seq.generator is None:
            seq.generator = torch.Generator()
            if seq.params.seed is not None:
                seq.generator.manual_seed(seq.params.seed)
            else:
                seq.generator.seed()
        probs = torch.softmax(_filter(logits[i], seq), -1)
        greedy[i] = int(torch.multinomial(probs, 1, generator=seq.generator))
    return greedy


def top_logprobs(logits: torch.Tensor, chosen: list[int], k: int) -> list[dict[str, Any]]:
    """Per row: the chosen token's logprob and the top-k alternatives ({token_id: logprob})."""
    lp = torch.log_softmax(logits, -1)
    picked = lp[torch.arange(len(chosen)), torch.tensor(chosen)].tolist()
    out: list[dict[str, Any]] = []
    if k > 0:
        vals, idx = lp.topk(k, -1)
        for r in range(len(chosen)):
            out.append({"token": chosen[r], "logprob": picked[r], "top": dict(zip(idx[r].tolist(), vals[r].tolist(), strict=True))})
    else:
        out = [{"token": chosen[r], "logprob": picked[r], "top": {}} for r in range(len(chosen))]
    return out
