"""Adapter artifacts: a PEFT adapter directory whose manifest `parent` is the base it was trained on.

`load_adapter` rebuilds base + adapter (the registered "adapter" loader), refusing a base that
is not the one recorded; `merge_adapter` folds a LoRA-type adapter into a standalone hf artifact.
Chains work: an adapter whose parent is itself an adapter loads the parent (merged) first.
"""

from __future__ import annotations

import hashlib
from typing import Any

from llmpress.artifact import Artifact, Step, create_artifact, register_loader
from llmpress.errors import ConfigError, NotFoundError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def base_fingerprint(base: Artifact) -> dict[str, Any]:
    """What identifies a base: its id and name, its shape, and a hash over its weight files' sha256."""
    import json

    from llmpress.artifact import hash_tree

    digests = base.manifest.files_sha256 or hash_tree(base.path)
    weights = sorted((k, v) for k, v in digests.items() if k.endswith(WEIGHT_SUFFIXES))
    shape: dict[str, Any] = {}
    cfg_path = base.path / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        shape = {k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}
    return {"id": base.id, "name": base.name, "path": str(base.path), **shape,
            "weights_sha256": hashlib.sha256(json.dumps(weights).encode()).hexdigest()}


def check_base(adapter: Artifact, base: Artifact) -> None:
    """Raise ConfigError unless `base` is the model `adapter` was trained on (same id or same weights)."""
    want = adapter.manifest.extra.get("base") or {}
    if base.id == adapter.manifest.parent or base.id == want.get("id"):
        return
    got = base_fingerprint(base)
    if want.get("weights_sha256") and got["weights_sha256"] == want["weights_sha256"]:
        return
    raise ConfigError(
        f"adapter {adapter.name!r} ({adapter.id}) was trained on base {want.get('name', '?')!r} "
        f"({adapter.manifest.parent}, {want.get('model_type')} hidden {want.get('hidden_size')} x "
        f"{want.get('num_hidden_layers')} layers); {base.name!r} ({base.id}, {got.get('model_type')} hidden "
        f"{got.get('hidden_size')} x {got.get('num_hidden_layers')} layers) is a different model",
        "load the adapter without a base (its recorded parent is used) or re-train it on this base")


def parent_of(adapter: Artifact) -> Artifact:
    """The base an adapter was trained on: by registry id, else its recorded path or built-in name."""
    from llmpress.sources import BUILTINS, resolve

    want = adapter.manifest.extra.get("base") or {}
    if not adapter.manifest.parent:
        raise ConfigError(f"adapter artifact {adapter.path} records no parent base", "re-create it with llmpress tune")
    candidates = [adapter.manifest.parent, want.get("path") or ""]
    if want.get("name") in BUILTINS:
        candidates.append(f"builtin:{want['name']}")
    for spec in candidates:
        if not spec:
            continue
        try:
            base = resolve(spec)
        except NotFoundError:  # not at this place: try the next; a damaged base (IntegrityError, ...) is reported
            continue
        try:
            check_base(adapter, base)
        except ConfigError:
            continue
        return base
    raise NotFoundError(f"the base of adapter {adapter.name!r}, artifact {adapter.manifest.parent} "
                        f"({want.get('name', '?')}), is not in the registry or at {want.get('path')}",
                        "restore the base artifact (or re-register it), then load the adapter again")


def plain_model(model: Any) -> Any:
    """A PEFT-wrapped model folded into plain weights, so another method can be trained on top."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if model.peft_config[model.active_adapter].is_prompt_learning:
        raise ConfigError("a prompt-tuned model cannot be merged into weights to train another method on top",
                          "make prompt tuning the last step of the recipe")
    return model.merge_and_unload()


def load_adapter(adapter: Artifact, base: Artifact | None = None, merge: bool = False, **kwargs: Any) -> Any:
    """Base model + this adapter, in eval mode. `base` defaults to the recorded parent."""
    from peft import PeftModel

    if adapter.manifest.format != "adapter":
        raise ConfigError(f"{adapter.name!r} is a {adapter.manifest.format} artifact, not an adapter",
                          "load it directly with Artifact.load_model()")
    if base is None:
        base = parent_of(adapter)
    else:
        check_base(adapter, base)
    model = plain_model(base.load_model(**kwargs))
    try:
        model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"adapter {adapter.name!r} does not fit base {base.name!r}: {str(e).splitlines()[0][:200]}",
                          "load it on the base it was trained on") from e
    model.eval()
    return model.merge_and_unload() if merge else model


@register_loader("adapter")
def _loader(artifact: Artifact, **kwargs: Any) -> Any:
    return load_adapter(artifact, **kwargs)


def merge_adapter(adapter: Artifact, name: str | None = None) -> Artifact:
    """Fold a LoRA-type adapter into its base: a standalone hf artifact whose parent is the adapter."""
    from peft import PeftModel

    from llmpress.sources.hf import save_model

    model = load_adapter(adapter)
    assert isinstance(model, PeftModel)
    if model.peft_config[model.active_adapter].is_prompt_learning:
        raise ConfigError(f"{adapter.name!r} is a prompt-tuning adapter: its virtual tokens are inputs, "
                          "there are no weights to merge them into", "serve or evaluate the adapter artifact itself")
    merged = model.merge_and_unload()
    tok = adapter.load_tokenizer()
    with create_artifact(name or f"{adapter.name}-merged", Step("merge", {"adapter": adapter.id}),
                         parent=adapter, format="hf", loader="hf") as w:
        save_model(merged, tok, w.path)
        w.manifest.extra["merged_from"] = {"adapter": adapter.id, "base": adapter.manifest.parent}
    assert w.artifact is not None
    return w.artifact
