"""Exports for other runtimes: one module per format, one name -> format table (`FORMATS`).

`export(artifact, make_config("gguf", precision="q4_1"))` writes a child artifact whose
files the target runtime loads unchanged (ONNX Runtime GenAI, llama.cpp, Triton), verified
against the source before it is moved into place.
"""

from __future__ import annotations

from llmpress.export.base import (
    FORMATS,
    ExportConfig,
    ExportError,
    ExportFormat,
    export,
    get_format,
    make_config,
)

__all__ = ["FORMATS", "ExportConfig", "ExportError", "ExportFormat", "export", "get_format", "make_config",
           "format_names"]

def format_names() -> list[str]:
    return FORMATS.names()
