"""Decoder-layer surgery shared by pruning and distillation: find the layer list, keep a subset.

Below both stages so neither imports the other for it (prune's recovery uses distillation; a
distillation student is cut from its teacher's layers).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from llmpress.errors import ConfigError, SourceError


def decoder_layers(model: Any) -> Any:
    """The ModuleList of decoder layers of a Llama-like model (CausalLM or SequenceClassification)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise SourceError(f"{type(model).__name__} has no model.layers",
                          "layer surgery (pruning, distillation students) supports Llama-style decoders (Llama, Mistral, Qwen2, SmolLM)")
    return layers


def keep_layers(model: Any, keep: list[int]) -> Any:
    """A new model of the same class holding only the decoder layers `keep` (in order), renumbered."""
    n = len(decoder_layers(model))
    if not keep or any(i < 0 or i >= n for i in keep):
        raise ConfigError(f"layer indices {keep} are not a non-empty subset of 0..{n - 1}", "choose valid layers")
    keep = sorted(set(keep))
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    remap = {old: new for new, old in enumerate(keep)}
    pat = re.compile(r"^model\.layers\.(\d+)\.")
    sd: dict[str, Any] = {}
    for key, t in model.state_dict().items():
        m = pat.match(key)
        if m is None:
            sd[key] = t
        elif int(m.group(1)) in remap:
            sd[f"model.layers.{remap[int(m.group(1))]}." + key[m.end():]] = t
    dtype = next(model.parameters()).dtype
    new = type(model)(cfg).to(dtype)
    new.load_state_dict(sd, strict=True)
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    new.eval()
    return new
