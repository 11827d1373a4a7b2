"""qat: quantization-aware fine-tuning, then conversion to the int4 (or int8) weight-only storage.

Each decoder Linear's forward uses fake-quantized weights (quantize -> dequantize with the
exact grid the storage will use) and a straight-through estimator for the gradient. The
loss is distillation (KL to the float model's next-token distribution) on a corpus' train
split, so the run recovers what quantization lost rather than adapting to the domain. At the
end, the trained float weights are rounded once into the int4/int8 layout of
`int4-weight-only` / `int8-weight-only`, whose loaders and kernels it shares.

Written by hand because torchao 0.18's QAT (`QATConfig`) converts to its tensor-subclass
layouts, which this storage does not use; the fake-quant is a few lines on our grid.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmpress.compress.quantize.base import QuantConfig, Scheme, register_scheme
from llmpress.compress.quantize.common import check_groups, decoder_linears, quantize_head_int8
from llmpress.compress.quantize.layers import (
    INT4_GROUP_SIZES,
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    int4_dequantize,
    int4_group_params,
    int4_quantize,
    int8_per_channel,
)
from llmpress.errors import ConfigError, DataError


@dataclass
class QatConfig(QuantConfig):
    bits: int = 4
    group_size: int = 64
    data: str = "builtin:pydoc"
    steps: int = 60
    batch_size: int = 2
    seq_len: int = 128
    lr: float = 5e-5
    seed: int = 0

    def validate(self) -> None:
        if self.bits not in (4, 8):
            raise ConfigError(f"qat bits must be 4 or 8, not {self.bits}", "pass --bits 4")
        if self.bits == 4 and self.group_size not in INT4_GROUP_SIZES:
            raise ConfigError(f"int4 group size {self.group_size} is not supported",
                              f"use one of {', '.join(map(str, INT4_GROUP_SIZES))}", param="group_size")
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 8 or self.lr <= 0:
            raise ConfigError("qat needs steps >= 1, batch_size >= 1, seq_len >= 8 and lr > 0",
                              "fix --steps / --lr")


def fake_quant(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """w rounded onto the storage grid, with an identity gradient (straight-through)."""
    with torch.no_grad():
        if bits == 4:
            s, m = int4_group_params(w, group, search=False)  # a cheap grid each step; conversion matches
            wq = int4_dequantize(int4_quantize(w, s, m, group), s, m, group)
        else:
            q, s = int8_per_channel(w)
            wq = q.float() * s[:, None]
    return w + (wq - w).detach()


class FakeQuantLinear(nn.Module):
    def __init__(self, lin: nn.Linear, bits: int, group: int) -> None:
        super().__init__()
        self.lin, self.bits, self.group = lin, bits, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fake_quant(self.lin.weight, self.bits, self.group), self.lin.bias)


def train_blocks(tokenizer: Any, spec: str, seq_len: int, need: int) -> torch.Tensor:
    from llmpress.data import load_corpus
    from llmpress.data.windows import training_blocks

    blocks = training_blocks(load_corpus(spec).split("train"), tokenizer, seq_len, max_blocks=need)
    if len(blocks) < 2:
        raise DataError(f"corpus {spec!r} has fewer than 2 training windows of {seq_len} tokens",
                        "use a larger corpus or a shorter --seq-len")
    return torch.tensor(blocks, dtype=torch.long)


def transform(model: nn.Module, tokenizer: Any, config: QatConfig, progress: Any = None) -> dict[str, Any]:
    if config.bits == 4:
        check_groups(model, config.group_size)
    torch.manual_seed(config.seed)
    data = train_blocks(tokenizer, config.data, config.seq_len, config.steps * config.batch_size)
    teacher = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fq: dict[str, FakeQuantLinear] = {}
    for name, lin in decoder_linears(model):
        lin.weight.requires_grad_(True)
        fq[name] = FakeQuantLinear(lin, config.bits, config.group_size)
        model.set_submodule(name, fq[name])
    params = [m.lin.weight for m in fq.values()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5) * (1 - s / config.steps))
    model.train()
    task = progress.add_task(f"qat int{config.bits} ({config.steps} steps)", total=config.steps) if progress else None
    losses: list[float] = []
    with torch.enable_grad():
        for step in range(config.steps):
            idx = torch.arange(step * config.batch_size, (step + 1) * config.batch_size) % len(data)
            ids = data[idx]
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(input_ids=ids, use_cache=False).logits.float(), -1)
            s_logp = F.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)
            loss = F.kl_div(s_logp.flatten(0, 1), t_logp.flatten(0, 1), log_target=True, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if task is not None:
                progress.update(task, advance=1, description=f"qat int{config.bits} kl {losses[-1]:.4f}")
    del teacher, opt
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for name, m in fq.items():
        lin = m.lin
        new = Int4WeightOnlyLinear.from_float(lin, config.group_size, search=False) if config.bits == 4 \
            else Int8WeightOnlyLinear.from_float(lin)
        model.set_submodule(name, new)
    if config.lm_head:
        quantize_head_int8(model)
    return {"kl_first": losses[0], "kl_last": sum(losses[-5:]) / len(losses[-5:]), "steps": len(losses)}


register_scheme(Scheme("qat", QatConfig, transform,
                       "as int4-weight-only (bits=4) or int8-weight-only (bits=8), from QAT-trained weights",
                       "fake-quant distillation fine-tune, then int4/int8 weight-only storage",
                       extra={"trains": True}))
