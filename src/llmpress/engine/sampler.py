"""Next-token choice from logits rows: penalties, temperature, top-k, top-p, min-p, seeds, logprobs.

The whole batch at once: per-row parameters become tensors, penalties are one scatter per kind, and
the filters (temperature, top-k, min-p, top-p) run on every sampled row together with one sort. Only
the final draw is per row: each request has its own torch generator, so seeded sampling is
reproducible whatever its batch neighbours are (and equal to what the per-row sampler drew).
"""

from __future__ import annotations

from typing import Any

import torch

from llmpress.engine.sequence import Sequence


def _counts(rows: list[list[int]], vocab: int) -> torch.Tensor:
    """[len(rows), vocab] occurrence counts of each row's token ids (float32)."""
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        return torch.zeros(len(rows), vocab)
    idx = torch.full((len(rows), width), vocab, dtype=torch.long)  # padding lands in a spare column
    for i, r in enumerate(rows):
        if r:
            idx[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    out = torch.zeros(len(rows), vocab + 1)
    out.scatter_add_(1, idx, torch.ones(idx.shape))
    return out[:, :vocab]


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Repetition (HF/CTRL style, over prompt + output), presence and frequency (OpenAI, over output), in place."""
    pen = [i for i, s in enumerate(seqs) if s.params.penalized]
    if not pen:
        return logits
    vocab = logits.shape[1]
    rows = torch.tensor(pen, dtype=torch.long)
    x = logits.index_select(0, rows)
    ps = [seqs[i].params for i in pen]
    rep = torch.tensor([p.repetition_penalty for p in ps])[:, None]
    if bool((rep != 1.0).any()):
        seen = _counts([seqs[i].token_ids for i in pen], vocab) > 0
        x = torch.where(seen & (rep != 1.0), torch.where(x > 0, x / rep, x * rep), x)
    freq = torch.tensor([p.frequency_penalty for p in ps])[:, None]
    pres = torch.tensor([p.presence_penalty for p in ps])[:, None]
    if bool((freq != 0).any() or (pres != 0).any()):
        cnt = _counts([seqs[i].output_ids for i in pen], vocab)
        x = x - (freq * cnt + pres * (cnt > 0).to(x.dtype))
    logits.index_copy_(0, rows, x)
    return logits


def filter_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor) -> torch.Tensor:
    """Temperature-scaled rows with top-k / min-p / top-p masked to -inf, each row with its own knobs
    ([N] tensors; top_k 0, min_p 0 and top_p 1 are off). The same masks as applying them one after another."""
    x = logits / temperature[:, None]
    sorted_x, order = torch.sort(x, dim=-1, descending=True)
    vocab = x.shape[1]
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab)
    kth = sorted_x.gather(1, (k - 1)[:, None])
    sorted_x = sorted_x.masked_fill(sorted_x < kth, float("-inf"))  # ties with the k-th stay, as topk + '<'
    if bool((min_p > 0).any()):
        probs = torch.softmax(sorted_x, -1)
        sorted_x = sorted_x.masked_fill(probs < (min_p[:, None] * probs[:, :1]), float("-inf"))
    if bool((top_p < 1).any()):
        probs = torch.softmax(sorted_x, -1)
        drop = (probs.cumsum(-1) - probs >= top_p[:, None]) & (top_p < 1)[:, None]  # keep the one crossing top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
    return torch.empty_like(x).scatter_(1, order, sorted_x)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One token per row of `logits` ([N, vocab], float32), row i for seqs[i]."""
    if any(s.params.penalized for s in seqs):
        logits = apply_penalties(logits.clone(), seqs)
    tokens = logits.argmax(-1).tolist()
    rand = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if not rand:
        return tokens
    ps = [seqs[i].params for i in rand]
    x = logits.index_select(0, torch.tensor(rand, dtype=torch.long)) if len(rand) != len(seqs) else logits
    probs = torch.softmax(filter_logits(
        x, torch.tensor([p.temperature for p in ps], dtype=x.dtype), torch.tensor([p.top_k for p in ps]),
        torch.tensor([p.top_p for p in ps], dtype=x.dtype), torch.tensor([p.min_p for p in ps], dtype=x.dtype)), -1)
    for j, i in enumerate(rand):
        seq = seqs[i]
        if seq.generator is None:
            seq.generator = torch.Generator()
            if seq.params.seed is not None:
                seq.generator.manual_seed(seq.params.seed)
            else:
                seq.generator.seed()
        tokens[i] = int(torch.multinomial(probs[j], 1, generator=seq.generator))
    return tokens


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
