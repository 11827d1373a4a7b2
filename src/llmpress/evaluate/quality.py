"""Quality: perplexity with sliding windows and exact token-weighted NLL, plus bits per byte."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llmpress.data.windows import sliding_windows, token_stream


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    window: int = 512,
    stride: int = 256,
    max_tokens: int | None = None,
    batch_size: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
    sample_tokens: int | None = None,
) -> dict[str, float]:
    """Exact token-weighted NLL over a token stream: every token after the first scored once.

    Windows overlap by `window - stride` tokens of context; the NLL of each scored token is
    summed in float64, so the perplexity is exp(total NLL / scored tokens), not a mean of
    per-window means. Bits per byte divide the same total (in bits) by the UTF-8 bytes of
    the scored text, which makes models with different tokenizers comparable.

    `sample_tokens`: score only about that many tokens, in windows spread evenly over the same
    `max_tokens` stream (a cheap proxy of the full measurement that sees all of its text, not
    just its first document).
    """
    import torch

    ids = token_stream(texts, tokenizer, max_tokens)
    wins = sliding_windows(ids, window, stride)
    if sample_tokens is not None and sample_tokens < len(ids) - 1:
        k = max(1, min(len(wins), math.ceil(sample_tokens / stride)))
        picks = sorted({int((i + 0.5) * len(wins) / k) for i in range(k)})  # the middle of k equal parts
        wins = [wins[i] for i in picks]
        ids = [ids[0]] + [t for w in wins for t in w.ids[w.score_from:]]  # what is scored, for bits per byte
    total_nll = 0.0
    count = 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(wins), batch_size):
            group = wins[start : start + batch_size]
            width = max(len(w.ids) for w in group)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            batch = torch.full((len(group), width), pad, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for i, w in enumerate(group):
                batch[i, : len(w.ids)] = torch.tensor(w.ids)
                mask[i, : len(w.ids)] = 1
            logits = model(input_ids=batch, attention_mask=mask).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = batch[:, 1:]
            token_nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            for i, w in enumerate(group):
                # logits at position p-1 predict token p; score tokens p in [score_from, len).
                sl = token_nll[i, w.score_from - 1 : len(w.ids) - 1]
                total_nll += float(sl.double().sum())
                count += sl.numel()
            if on_progress:
                on_progress(min(start + batch_size, len(wins)), len(wins))
    scored_text = tokenizer.decode(ids[1:], skip_special_tokens=True)
    n_bytes = max(1, len(scored_text.encode("utf-8")))
    mean = total_nll / count
    return {
        "perplexity": math.exp(mean),
        "nll": mean,
        "bits_per_byte": total_nll / math.log(2) / n_bytes,
        "tokens": count,
        "bytes": n_bytes,
        "window": window,
        "stride": stride,
    }
