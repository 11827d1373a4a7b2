"""Quantization schemes: one module each, one name -> scheme table (`SCHEMES`).

`quantize(artifact, make_config("int4-weight-only", group_size=64))` returns a new artifact
that reloads already quantized through the `quantized` loader registered in `storage`.
"""

from __future__ import annotations

from llmpress.compress.quantize.base import (
    SCHEMES,
    QuantConfig,
    Quantized,
    Scheme,
    build_quantized,
    get_scheme,
    make_config,
    quantize,
    save_quantized_artifact,
)
from llmpress.compress.quantize.storage import load_quantized

__all__ = ["SCHEMES", "QuantConfig", "Scheme", "get_scheme", "make_config", "quantize", "load_quantized",
           "scheme_names",
           "Quantized", "build_quantized", "save_quantized_artifact"]

def scheme_names() -> list[str]:
    return SCHEMES.names()
