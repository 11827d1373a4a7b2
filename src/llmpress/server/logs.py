"""Structured JSON logs: one object per line with a timestamp, level, message and request fields."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = ("request_id", "method", "path", "status", "latency_ms", "key_id", "model", "tokens_in", "tokens_out",
           "finish_reason", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for f in _FIELDS:
            if hasattr(record, f):
                out[f] = getattr(record, f)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_json_logging(level: int = logging.INFO) -> None:
    """Route llmpress.* loggers to stderr as JSON lines (idempotent)."""
    root = logging.getLogger("llmpress")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter())
    root.addHandler(h)
    root.setLevel(level)
    root.propagate = False
