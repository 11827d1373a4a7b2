"""GGUF files -> float32 safetensors artifacts, converted once and cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmpress.artifact import Artifact, Step, create_artifact
from llmpress.errors import SourceError
from llmpress.sources.hf import quiet_hf, save_model


def load_gguf(path: Path) -> tuple[Any, Any]:
    """transformers' own GGUF path (dequantizes to float32); needs the `gguf` package."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_hf()
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise SourceError(f"could not read GGUF {path}: {str(e).splitlines()[0] if str(e) else e!r}",
                          "check the file is a complete GGUF of an architecture transformers supports") from e
    return model, tok


def gguf_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    quiet_hf()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def convert_gguf(path: Path, name: str, dest: Path) -> Artifact:
    """Load a GGUF, rebuild a plain float32 model from its config and save it as an artifact.

    `save_pretrained` refuses a GGUF-loaded model, so the weights move into a fresh model
    built from the same config (without the gguf quantization_config).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model, tok = load_gguf(path)
    cfg = model.config
    if getattr(cfg, "quantization_config", None) is not None:
        del cfg.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), assign=True)
    fresh.tie_weights()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with create_artifact(name, Step("convert-gguf", {"gguf": str(path), "dtype": "float32"}), dest=dest) as w:
        save_model(fresh, tok, w.path)
    assert w.artifact is not None
    return w.artifact
