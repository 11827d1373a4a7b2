"""Source loading failures are one clear error, never swallowed."""

from __future__ import annotations

import sys

import pytest

from llmpress.errors import SourceError
from llmpress.sources.hf import load_hf_model


def test_broken_transformers_install_is_named(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import transformers...` raise ImportError, as a broken install does.
    for name in {"transformers", "transformers.utils", *(m for m in sys.modules if m.startswith("transformers."))}:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SourceError, match="transformers cannot be imported") as e:
        load_hf_model(tiny.path)
    assert "pip install" in (e.value.fix or "")
