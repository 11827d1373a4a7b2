"""Package structure: stages import only stages to their left (ARCHITECTURE.md), never in a circle.

A static check over every `import` statement (module level and inside functions: a lazy import is
still a dependency), plus one fresh interpreter importing every module leaf-first, which fails on
an import cycle that only bites at start-up.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import llmpress

SRC = Path(llmpress.__file__).resolve().parent

# Stages from left (imported by anyone) to right (imports the others). A stage may import the
# stages before it in this list, never one after it nor one on the same line. compress is split
# into its sub-stages. artifact and registry are one stage (the store): the registry is the index
# of artifacts and create_artifact records each one in it in the same step.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("hardware", "methods", "modelstats", "frontier"),  # leaves: import only errors
    ("store",),
    ("sources",),
    ("data",),
    ("compress", "compress.decoder"),
    ("compress.quantize",),
    ("compress.distill",),
    ("compress.prune",),  # recovery after pruning is a short distillation
    ("tune",),
    ("engine",),  # runs quantized layers; engine.backends run exported formats (ONNX Runtime, llama.cpp)
    ("export",),  # verifies each export by running it in its runtime (engine.backends)
    ("evaluate",),  # times the engine
    ("explain",),
    ("report",),  # imports nothing from plan
    ("server",),
    ("gateway", "ops", "scale"),
    ("plan",),  # adapts compress / tune steps into recipes, chooses with frontier, writes report
    ("cli",),
]
RANK = {stage: i for i, layer in enumerate(LAYERS) for stage in layer}
SKIP = ("llmpress.registry.migrations",)  # Alembic scripts: env.py runs a migration when imported


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "llmpress" or len(parts) < 2:
        return None
    if parts[1] in ("artifact", "registry"):
        return "store"
    if parts[1] == "compress" and len(parts) > 2:
        return f"compress.{parts[2]}"
    return parts[1]


def package_modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    mods = {}
    for p in sorted(SRC.rglob("*.py")):
        name = ".".join(("llmpress", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        if not name.startswith(SKIP):
            mods[name] = p
    return mods


def imports_of(module: str, path: Path) -> list[tuple[str, int]]:
    """Every llmpress module that `module` imports, anywhere in the file (lazy imports too), with its line."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = module.split(".")
            if node.level:  # relative: resolve against this module's package
                keep = len(parts) - node.level + (1 if path.name == "__init__.py" else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from llmpress.compress import prune` imports the module llmpress.compress.prune
            out += [(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base, node.lineno) for a in node.names]
    return [(m, line) for m, line in out if m.startswith("llmpress.")]


MODULES = package_modules()


def test_every_stage_is_placed() -> None:
    unplaced = {stage_of(m) for m in MODULES} - set(RANK) - {None}
    assert not unplaced, f"new stage(s) {sorted(unplaced)}: add them to LAYERS in this test (see ARCHITECTURE.md)"


def test_stages_import_only_to_their_left() -> None:
    bad = []
    for mod, path in MODULES.items():
        src = stage_of(mod)
        for target, line in imports_of(mod, path):
            dst = stage_of(target)
            if src is None or dst is None or dst == src:
                continue
            if RANK.get(dst, -1) >= RANK.get(src, -1):
                bad.append(f"{mod}:{line} ({src}) imports {target} ({dst})")
    assert not bad, "imports to the right or sideways (move the shared piece down into a leaf):\n" + "\n".join(bad)


def test_named_cycles_stay_broken() -> None:
    """The cycles this layout once had: report->plan (pareto), prune<->distill, compress->plan (recipes)."""
    edges = {(stage_of(m), stage_of(t)) for m, p in MODULES.items() for t, _ in imports_of(m, p)}
    for src, dst in [("report", "plan"), ("compress.distill", "compress.prune"), ("compress.prune", "plan"),
                     ("compress.distill", "plan"), ("compress.quantize", "plan"), ("compress.prune", "evaluate"),
                     ("tune", "evaluate"), ("store", "sources")]:
        assert (src, dst) not in edges, f"{src} imports {dst} again"


def test_import_every_module_leaf_first_in_a_fresh_interpreter() -> None:
    mods = sorted(MODULES, key=lambda m: (RANK.get(stage_of(m) or "errors", 0), m))
    code = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        "for m in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if (e.name or '').startswith('llmpress'):\n"
        "            failed[m] = repr(e)\n"  # a third-party extra that is not installed is fine
        "    except Exception as e:\n"
        "        failed[m] = repr(e)\n"
        "print(json.dumps(failed))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(mods)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.parametrize("table", ["llmpress.compress.quantize:SCHEMES", "llmpress.compress.prune:METHODS",
                                   "llmpress.tune:METHODS"])
def test_method_tables_share_one_mechanism(table: str) -> None:
    import importlib

    from llmpress.errors import ConfigError
    from llmpress.methods import MethodTable

    mod, _, name = table.partition(":")
    t = getattr(importlib.import_module(mod), name)
    assert isinstance(t, MethodTable) and len(t) >= 4
    first = next(iter(t))
    assert t.get_method(first) is t[first]
    with pytest.raises(ConfigError, match=f"unknown {t.kind} 'nope'") as e:
        t.get_method("nope")
    assert first in (e.value.fix or "")
