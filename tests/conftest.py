"""Test set-up: offline Hugging Face, a private LLMPRESS_HOME per session, shared built-in cache.

Built-in models are converted once per machine into a persistent cache
(`$LLMPRESS_TEST_MODELS`, default ~/.cache/llmpress/test-models) that every test
session's private home links to, so the GGUF conversion is paid once, not per run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tests/pg.py: a real PostgreSQL server per session and the sqlite/postgresql `backend_registry` fixture
pytest_plugins = ["pg"]

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(scope="session", autouse=True)
def llmpress_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("llmpress-home")
    cache = Path(os.environ.get("LLMPRESS_TEST_MODELS", Path.home() / ".cache" / "llmpress" / "test-models"))
    cache.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(cache, target_is_directory=True)
    os.environ["LLMPRESS_HOME"] = str(home)
    os.environ.pop("LLMPRESS_DATABASE_URL", None)
    return home


@pytest.fixture(scope="session")
def tiny(llmpress_home: Path):
    """builtin:tiny-llama, the fast random-weight Llama."""
    from llmpress.sources import resolve

    return resolve("builtin:tiny-llama")


@pytest.fixture(scope="session")
def smollm2(llmpress_home: Path):
    """builtin:smollm2-135m (for `slow` tests)."""
    from llmpress.sources import resolve

    return resolve("builtin:smollm2-135m")


@pytest.fixture
def fresh_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A registry in its own SQLite file, for tests that count rows."""
    from llmpress.registry import get_registry

    monkeypatch.setenv("LLMPRESS_DATABASE_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    return get_registry()
