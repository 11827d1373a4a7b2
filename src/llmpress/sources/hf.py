"""Plain Hugging Face loading and saving, with llmpress errors instead of stack traces."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmpress.artifact import Artifact, register_loader
from llmpress.errors import SourceError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def quiet_hf() -> None:
    """Keep transformers' own progress bars and advisory warnings out of our output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError as e:  # every caller goes on to load a model with transformers: say why it cannot
        raise SourceError(f"transformers cannot be imported ({type(e).__name__}: {e})",
                          "reinstall llmpress's dependencies (`pip install -e .`; it needs transformers>=5.0)") from e
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def read_config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise SourceError(f"{path} has no config.json", "point at a Hugging Face model directory or a .gguf file")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise SourceError(f"{cfg} is not valid JSON ({e})", "restore the model's config.json") from e


def auto_class(config: dict[str, Any]) -> Any:
    """The transformers Auto class for an architecture, or a clear error when unsupported."""
    import transformers

    archs = config.get("architectures") or []
    arch = archs[0] if archs else ""
    if arch.endswith("ForSequenceClassification"):
        return transformers.AutoModelForSequenceClassification
    if arch and not arch.endswith("ForCausalLM") and not arch.endswith("LMHeadModel"):
        raise SourceError(f"unsupported architecture {arch!r}",
                          "llmpress handles causal LMs (*ForCausalLM) and *ForSequenceClassification models")
    model_type = config.get("model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        raise SourceError(f"unsupported model type {model_type!r}",
                          "use a model whose architecture this transformers version knows")
    return transformers.AutoModelForCausalLM


def load_hf_model(path: Path, dtype: Any = None, **kwargs: Any) -> Any:
    """from_pretrained on a local directory, eval mode, dtype as saved unless given."""
    quiet_hf()
    path = Path(path)
    cls = auto_class(read_config(path))
    try:
        model = cls.from_pretrained(path, dtype=dtype if dtype is not None else "auto", **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise SourceError(f"could not load the model in {path}: {str(e).splitlines()[0]}",
                          "check that its weights match config.json or re-create the artifact") from e
    model.eval()
    return model


def _tokenizer_class(path: Path) -> Any:
    """The class AutoTokenizer would build for `path`: transformers' generic `TokenizersBackend` itself when
    tokenizer_config.json names it (every tokenizer transformers 5 saves from a tokenizer.json) and brings no
    code of its own; AutoTokenizer otherwise. Why: AutoTokenizer's model registry imports configuration and
    modeling helpers (accelerate, hub kernels), ~60 MB of RSS and their import time, in every process that only
    needs a tokenizer (eval workers; `serve` itself uses engine/tokenizer.py)."""
    try:
        tc = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        tc = None
    if (isinstance(tc, dict) and tc.get("tokenizer_class") == "TokenizersBackend" and "auto_map" not in tc
            and (path / "tokenizer.json").is_file()):
        from transformers import TokenizersBackend

        return TokenizersBackend
    from transformers import AutoTokenizer

    return AutoTokenizer


def load_tokenizer(path: Path) -> Any:
    """The tokenizer saved beside a model; a model without one is a clear error."""
    quiet_hf()
    path = Path(path)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise SourceError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}...)",
                          "copy the tokenizer of the base model into the directory (tokenizer.save_pretrained)")
    try:
        tok = _tokenizer_class(path).from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        raise SourceError(f"could not load the tokenizer in {path}: {str(e).splitlines()[0]}",
                          "re-save it with tokenizer.save_pretrained") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def save_model(model: Any, tokenizer: Any, dest: Path) -> None:
    """save_pretrained in safetensors, dropping a stale quantization_config (e.g. from GGUF)."""
    cfg = model.config
    if getattr(cfg, "quantization_config", None) is not None and cfg.quantization_config.get("quant_method") == "gguf":
        del cfg.quantization_config
    model.save_pretrained(dest, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)


@register_loader("hf")
def _hf_loader(artifact: Artifact, **kwargs: Any) -> Any:
    return load_hf_model(artifact.path, **kwargs)


@register_loader("tokenizer")
def _tokenizer_loader(artifact: Artifact) -> Any:
    """The artifact's own tokenizer; an adapter saved without one uses its base's."""
    base = artifact.path
    if artifact.manifest.format == "adapter" and not (base / "tokenizer_config.json").exists():
        from llmpress.sources import resolve

        base = resolve(artifact.manifest.parent or "").path
    return load_tokenizer(base)
