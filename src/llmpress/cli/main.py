"""The `llmpress` command. Command groups live in sibling modules that define `register(app)`."""

from __future__ import annotations

import importlib
import os
import pkgutil

import typer

import llmpress.cli as cli_pkg

app = typer.Typer(name="llmpress", help="Benchmark, tune, compress, verify, export and serve LLMs.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name in {"main", "common"}:
            continue
        module = importlib.import_module(f"llmpress.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _register_all()
    app()


if __name__ == "__main__":
    main()
