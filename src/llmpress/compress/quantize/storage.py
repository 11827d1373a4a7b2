"""Storage of quantized artifacts and the `quantized` loader.

Format (manifest.loader = "quantized"): `config.json` of the float architecture, tokenizer
files, and `model.safetensors` holding the model's state dict in which every quantized
layer's `weight` is replaced by its storage buffers (see each class in `layers.py`).
`manifest.extra["quantization"]` = {"scheme", "params", "modules": {name: {"kind", ...}},
"aliases": {key: stored_key}} — `aliases` records tied tensors stored once.
Loading builds the architecture on the meta device, swaps in empty quantized modules,
assigns the stored tensors, then builds kernel layouts: nothing is re-quantized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmpress.artifact import Artifact, register_loader
from llmpress.compress.quantize.layers import QuantModule, empty_like_kind
from llmpress.errors import ConfigError, ManifestError

WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


def describe_modules(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {name: {"kind": m.kind, **m.spec()} for name, m in model.named_modules() if isinstance(m, QuantModule)}


def save_quantized(model: nn.Module, tokenizer: Any, dest: Path, scheme: str, params: dict[str, Any]) -> dict[str, Any]:
    """Write config + safetensors + tokenizer into `dest`; return the manifest's `quantization` entry."""
    from safetensors.torch import save_file

    if any(getattr(m, "_released", False) for m in model.modules()):
        raise ConfigError("this quantized model was loaded for inference and its storage tensors were freed",
                          "quantize the float parent again to write a new artifact")
    sd = model.state_dict()
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for key, t in sd.items():
        sig = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if sig in seen:  # a tied tensor (e.g. lm_head sharing the embedding): store once
            aliases[key] = seen[sig]
            continue
        seen[sig] = key
        stored[key] = t.detach().contiguous().cpu()
    save_file(stored, str(dest / WEIGHTS), metadata={"format": "pt", "llmpress_quantization": scheme})
    cfg = model.config
    if getattr(cfg, "quantization_config", None) is not None:
        del cfg.quantization_config
    cfg.save_pretrained(dest)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(dest)
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)
    return {"format_version": FORMAT_VERSION, "scheme": scheme, "params": params,
            "modules": describe_modules(model), "aliases": aliases}


def prepare_all(model: nn.Module) -> nn.Module:
    """Build every quantized layer's kernel layout (done once after quantizing or loading)."""
    for m in model.modules():
        if isinstance(m, QuantModule):
            m.prepare()
    return model


@register_loader("quantized")
def load_quantized(art: Artifact, **_: Any) -> nn.Module:
    """Rebuild an already-quantized model from its stored int tensors (the `quantized` loader)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from llmpress.sources.hf import auto_class, quiet_hf, read_config

    quiet_hf()
    quantization_entry(art)  # a clear error before transformers builds anything
    config = AutoConfig.from_pretrained(art.path)
    cls = auto_class(read_config(art.path))
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(config)
    fill_quantized(model, art)
    model.eval()
    return model


def quantization_entry(art: Artifact) -> dict[str, Any]:
    """The manifest's `quantization` entry, checked: a clear error when it is missing or too new."""
    q = art.manifest.extra.get("quantization")
    if not isinstance(q, dict) or "modules" not in q:
        raise ManifestError(f"artifact {art.path} says loader 'quantized' but has no quantization entry",
                            "re-create it with `llmpress quantize`")
    if q.get("format_version", 1) > FORMAT_VERSION:
        raise ManifestError(f"artifact {art.path} uses quantized format v{q['format_version']}",
                            "upgrade llmpress to load it")
    return q


def fill_quantized(model: nn.Module, art: Artifact) -> None:
    """Give `model` (built on the meta device, float layers) the artifact's quantized layers and stored tensors,
    then build kernel layouts and free the storage copies. Shared by this loader and the engine's lite model."""
    q = quantization_entry(art)
    for name, spec in q["modules"].items():
        spec = dict(spec)
        kind = spec.pop("kind")
        model.set_submodule(name, empty_like_kind(kind, model.get_submodule(name), spec))
    sd = read_weights(art.path / WEIGHTS)
    for key, src in (q.get("aliases") or {}).items():
        sd[key] = sd[src]
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise ManifestError(f"artifact {art.path}: stored tensors do not match the architecture "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                            "re-create the artifact with `llmpress quantize`")
    for key, src in (q.get("aliases") or {}).items():  # re-tie shared modules' tensors
        _retie(model, key, src)
    left = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise ManifestError(f"artifact {art.path}: tensors {left[:3]} were not stored", "re-create the artifact")
    prepare_all(model)
    for m in model.modules():  # kernels hold their own copies: drop the storage copies from memory
        if isinstance(m, QuantModule):
            m.release_storage()
    del sd
    trim_heap()  # the file buffer and its per-tensor copies are freed: give the pages back


ALIGN = 64


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every stored tensor in its own 64-byte-aligned allocation, read one at a time.

    Why not `load_file(...)` + clone: its tensors are views into one mmap of the file, and cloning
    them faults every page of the file in beside the copies, so loading peaked at twice the weights.
    Read with pread, a tensor is its own buffer and only an unaligned one is copied (aten's int8 / int4
    fallback kernels want aligned weights): the peak is the weights plus one tensor.
    """
    from safetensors import safe_open

    try:
        f = safe_open(str(path), framework="pt", backend="pread")
    except TypeError:  # safetensors < 0.8 reads through mmap only
        f = safe_open(str(path), framework="pt")
    sd: dict[str, torch.Tensor] = {}
    with f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            t = f.get_tensor(key)
            sd[key] = t if t.data_ptr() % ALIGN == 0 else t.clone(memory_format=torch.contiguous_format)
            del t
    return sd


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim): loading and fusing weights free large
    float copies that glibc would otherwise keep in the process, counted in its RSS. No-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _retie(model: nn.Module, key: str, src: str) -> None:
    mod_name, _, attr = key.rpartition(".")
    src_mod, _, src_attr = src.rpartition(".")
    target = getattr(model.get_submodule(src_mod), src_attr)
    mod = model.get_submodule(mod_name)
    if isinstance(target, nn.Parameter):
        setattr(mod, attr, target)
    else:
        mod._buffers[attr] = target
