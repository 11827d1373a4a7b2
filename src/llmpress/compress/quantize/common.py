"""Helpers shared by schemes: which layers to quantize, swapping them, the int8 tied head."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from llmpress.compress.quantize.layers import Int8Embedding, Int8WeightOnlyLinear, check_group


def decoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every nn.Linear except the output head, in module order."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]


def check_groups(model: nn.Module, group: int) -> None:
    """Fail before any work when `group` does not divide some layer's input width."""
    for name, lin in decoder_linears(model):
        check_group(lin.in_features, group, name)


def swap_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module],
                 on_step: Callable[[], None] | None = None) -> None:
    for name, lin in decoder_linears(model):
        model.set_submodule(name, make(name, lin))
        if on_step is not None:
            on_step()


def quantize_head_int8(model: nn.Module) -> None:
    """lm_head as int8 weight-only; a tied input embedding shares the very same int8 tensors
    (per-row scales of [vocab, hidden] are per-output-channel scales of the head)."""
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    if head is None or not isinstance(head, nn.Linear):
        return
    tied = emb is not None and head.weight.data_ptr() == emb.weight.data_ptr()
    qhead = Int8WeightOnlyLinear.from_float(head)
    if tied:
        qemb = Int8Embedding(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        qemb.qweight, qemb.scales = qhead.qweight, qhead.scales
        model.set_input_embeddings(qemb)
    model.set_output_embeddings(qhead)
