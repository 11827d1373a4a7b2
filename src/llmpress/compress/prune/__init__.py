"""Pruning: one module per method and one name table, like PEFT's tuners.

`prune(artifact, config) -> Artifact` is the step. Methods:
  unstructured  L1 magnitude per layer or global; zeros stored (reported honestly)
  structured    attention heads + MLP neurons physically removed (smaller, faster)
  2:4           semi-structured masks (report; no CPU kernel)
  layers        whole decoder layers dropped by measured block influence
Structured and layers can be followed by a short recovery distillation from the parent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmpress.artifact import Artifact, Step, create_artifact
from llmpress.compress.prune.config import METHOD_NAMES, PruneConfig, parse_amount
from llmpress.errors import ConfigError, SourceError
from llmpress.methods import MethodTable

__all__ = ["PruneConfig", "prune", "METHODS", "parse_amount", "RECIPES"]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    needs_calibration: bool
    run: Callable[..., tuple[Any, dict[str, Any]]]


def _unstructured(model: Any, cfg: PruneConfig, batches: Any, progress: Any) -> tuple[Any, dict[str, Any]]:
    from llmpress.compress.prune import unstructured

    return unstructured.run(model, float(cfg.amount), cfg.scope)  # type: ignore[arg-type]


def _structured(model: Any, cfg: PruneConfig, batches: Any, progress: Any) -> tuple[Any, dict[str, Any]]:
    from llmpress.compress.prune import structured

    return structured.run(model, cfg.heads, cfg.mlp, batches, progress,  # type: ignore[arg-type]
                          reconstruct_outputs=cfg.reconstruct)


def _nm(model: Any, cfg: PruneConfig, batches: Any, progress: Any) -> tuple[Any, dict[str, Any]]:
    from llmpress.compress.prune import nm

    return nm.run(model, 2, 4)


def _layers(model: Any, cfg: PruneConfig, batches: Any, progress: Any) -> tuple[Any, dict[str, Any]]:
    from llmpress.compress.prune import layers

    return layers.run(model, int(cfg.layers or 0), batches, progress)


METHODS: MethodTable[Method] = MethodTable("prune method", {
    "unstructured": Method("unstructured", "L1-magnitude weight pruning (zeros stored; no size/speed gain)", False,
                           _unstructured),
    "structured": Method("structured", "remove attention heads and MLP neurons by calibration importance", True,
                         _structured),
    "2:4": Method("2:4", "2-of-4 semi-structured masks (GPU sparse kernels only)", False, _nm),
    "layers": Method("layers", "drop whole decoder layers by block influence", True, _layers),
}, param="method")
assert tuple(METHODS) == METHOD_NAMES

# Recipe names for `llmpress optimize` -> the config they stand for.
RECIPES: dict[str, PruneConfig] = {
    "prune:heads-25%": PruneConfig(method="structured", heads=0.25),
    "prune:mlp-25%": PruneConfig(method="structured", mlp=0.25),
    "prune:structured-25%": PruneConfig(method="structured", heads=0.25, mlp=0.25, recover_steps=100),
    "prune:layers-4": PruneConfig(method="layers", layers=4, recover_steps=100),
    "prune:unstructured-50%": PruneConfig(method="unstructured", amount=0.5),
    "prune:2:4": PruneConfig(method="2:4"),
}


def _size_params(model: Any) -> tuple[int, int]:
    from llmpress.compress.prune.unstructured import count_params

    c = count_params(model)
    return c["params_total"], c["params_nonzero"]


def prune(artifact: Artifact, config: PruneConfig, progress: Any = None) -> Artifact:
    """Prune `artifact` with `config.method` and write the result as a child artifact.

    Everything that can be refused (amounts, method, data, architecture) is checked before the
    new artifact directory exists; on any error nothing is written.
    """
    from llmpress.compress.prune.calibration import decoder_layers, load_calibration
    from llmpress.sources.hf import save_model

    config.validate()
    if artifact.manifest.loader != "hf" or artifact.manifest.format != "hf":
        raise SourceError(f"artifact {artifact.name} is {artifact.manifest.format}/{artifact.manifest.loader}, "
                          "not a plain Hugging Face model", "prune the float model, then quantize the result")
    method = METHODS.get_method(config.method)
    model = artifact.load_model()
    tok = artifact.load_tokenizer()
    decoder_layers(model)  # unsupported architectures fail here, before any work
    if config.method == "layers" and int(config.layers or 0) >= model.config.num_hidden_layers:
        raise ConfigError(f"cannot drop {config.layers} of {model.config.num_hidden_layers} layers",
                          f"pass --layers between 1 and {model.config.num_hidden_layers - 1}")
    batches = None
    if method.needs_calibration or config.recover_steps:
        batches = load_calibration(tok, config.data, config.calibration_samples, config.seq_len)
    before_total, _ = _size_params(model)
    t0 = time.perf_counter()
    parent_model = None
    if config.recover_steps:
        import copy

        parent_model = copy.deepcopy(model)
    pruned, report = method.run(model, config, batches, progress)
    report["prune_seconds"] = round(time.perf_counter() - t0, 2)
    if config.recover_steps:
        from llmpress.compress.prune.recovery import recover

        report["recovery"] = recover(pruned, parent_model, tok, config.data, config.recover_steps,
                                     config.recover_batch, min(config.seq_len, 256), config.recover_lr, progress)
        del parent_model
    after_total, after_nonzero = _size_params(pruned)
    report.update({"params_before": before_total, "params_after": after_total, "params_nonzero": after_nonzero,
                   "param_ratio": round(after_total / before_total, 4)})
    tag = {"unstructured": f"sparse{float(config.amount or 0):.0%}", "2:4": "2of4",
           "layers": f"drop{config.layers}",
           "structured": f"h{float(config.heads or 0):.0%}-m{float(config.mlp or 0):.0%}"}[config.method]
    name = config.name or f"{artifact.name}-prune-{tag}".replace("%", "pct")
    with create_artifact(name, Step("prune", config.params()), parent=artifact) as w:
        save_model(pruned, tok, w.path)
        w.manifest.extra["prune"] = {"method": config.method}
        w.manifest.metrics["prune"] = report
        w.manifest.metrics["size"] = {"params": after_total, "nonzero_params": after_nonzero}
    assert w.artifact is not None
    w.artifact.record_metrics("size", {"bytes_on_disk": w.artifact.bytes_on_disk(),
                                       "bytes_parent": artifact.bytes_on_disk()})
    return w.artifact
