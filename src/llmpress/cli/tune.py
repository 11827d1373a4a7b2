"""`llmpress tune full|lora|prompt|adapter MODEL --data FILE`, `tune recipe`, `tune merge`, `tune methods`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmpress.cli.common import console, out, print_json, progress, run_guarded

tune_app = typer.Typer(help="Fine-tune a model (full, LoRA, prompt tuning, bottleneck adapters) into a new artifact.",
                       no_args_is_help=True)

Model = Annotated[str, typer.Argument(help="base model: builtin:smollm2-135m, an artifact id/name, a directory")]
Data = Annotated[str, typer.Option("--data", help="jsonl ({messages} | {text,label} | {text}), .txt, "
                                   "builtin:pydoc-instruct or builtin:pydoc")]
Epochs = Annotated[float, typer.Option(help="passes over the training split (ignored with --max-steps)")]
MaxSteps = Annotated[int, typer.Option("--max-steps", help="optimizer steps; overrides --epochs when > 0")]
Lr = Annotated[float | None, typer.Option(help="learning rate (default: the method's own)")]
Batch = Annotated[int, typer.Option("--batch-size")]
Accum = Annotated[int, typer.Option("--grad-accum", help="gradient accumulation steps")]
SeqLen = Annotated[int, typer.Option("--seq-len", help="tokens per example (longer ones are cut)")]
Seed = Annotated[int, typer.Option()]
Bf16 = Annotated[str, typer.Option(help="bf16 autocast: auto (if the CPU has native bf16), on, off")]
Task = Annotated[str, typer.Option(help="auto | instruction | classification | causal_lm")]
Name = Annotated[str | None, typer.Option(help="name of the new artifact")]
Resume = Annotated[bool, typer.Option("--resume", help="continue from the checkpoint an interrupted run saved")]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
Processes = Annotated[int, typer.Option("--processes", help="data-parallel ranks on this machine (gloo); "
                                        "--batch-size stays the global batch")]


def _train(epochs: float, max_steps: int, lr: float | None, batch_size: int, grad_accum: int, seq_len: int,
           seed: int, bf16: str, task: str, gradient_checkpointing: bool = False) -> Any:
    from llmpress.tune.config import TrainConfig

    return TrainConfig(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                       seq_len=seq_len, seed=seed, bf16=bf16, task=task, gradient_checkpointing=gradient_checkpointing)


def _show(art: Any, as_json: bool) -> None:
    m = dict(art.manifest.metrics.get("tune", {}))
    if as_json:
        print_json({"id": art.id, "name": art.name, "format": art.manifest.format, "parent": art.manifest.parent,
                    "path": str(art.path), "metrics": art.manifest.metrics})
        return
    from rich.table import Table

    t = Table(title=f"{art.name} ({art.id}, {art.manifest.format})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("method", "trainable_params", "trainable_pct", "steps", "steps_per_s", "peak_rss_mb",
              "eval_loss_before", "eval_loss_after", "accuracy_before", "accuracy_after", "train_examples",
              "eval_examples"):
        if k in m:
            t.add_row(k, str(m[k]))
    t.add_row("path", str(art.path))
    out.print(t)


def _tune(method: str, model: str, data: str, train: Any, method_opts: dict[str, Any], name: str | None,
          resume: bool, as_json: bool, processes: int = 1) -> None:
    def body() -> int:
        import contextlib
        import sys

        from llmpress.scale import launch
        from llmpress.sources import resolve
        from llmpress.tune.run import parse_method_options, tune_artifact

        params = parse_method_options(method, method_opts)
        if processes > 1 and not launch.in_child():  # re-run as N ranks; the children do the work
            launch.per_process_batch(train.batch_size, processes)
            resolve(model)
            return launch.launch(sys.argv[1:], processes)
        if launch.world_size() > 1:
            train.batch_size = launch.per_process_batch(train.batch_size, launch.world_size())
            launch.init_process_group()
        base = resolve(model)
        with progress() if launch.is_main() else contextlib.nullcontext() as p:
            art = tune_artifact(base, method, data, params, train, name=name, resume=resume, progress=p)
        if art is not None:  # only rank 0 of a data-parallel run has one
            _show(art, as_json)
        return 0

    rc = run_guarded(body)
    if rc:
        raise typer.Exit(rc)


@tune_app.command("full")
def full(model: Model, data: Data, epochs: Epochs = 1.0, max_steps: MaxSteps = -1, lr: Lr = None,
         batch_size: Batch = 4, grad_accum: Accum = 1, seq_len: SeqLen = 256, seed: Seed = 0, bf16: Bf16 = "auto",
         task: Task = "auto",
         gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing",
                                                              help="recompute activations: less memory, slower")] = False,
         name: Name = None, resume: Resume = False, as_json: Json = False, processes: Processes = 1) -> None:
    """Train every parameter; writes a standalone model artifact."""
    _tune("full", model, data, _train(epochs, max_steps, lr, batch_size, grad_accum, seq_len, seed, bf16, task,
                                      gradient_checkpointing), {}, name, resume, as_json, processes)


@tune_app.command("lora")
def lora(model: Model, data: Data, epochs: Epochs = 1.0, max_steps: MaxSteps = -1, lr: Lr = None,
         batch_size: Batch = 4, grad_accum: Accum = 1, seq_len: SeqLen = 256, seed: Seed = 0, bf16: Bf16 = "auto",
         task: Task = "auto", r: Annotated[int, typer.Option("--r", "--rank", help="LoRA rank")] = 16,
         alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / r)")] = 32,
         dropout: Annotated[float, typer.Option()] = 0.05,
         target_modules: Annotated[str | None, typer.Option(help="comma-separated module names "
                                                            "(default: per architecture)")] = None,
         name: Name = None, resume: Resume = False, as_json: Json = False, processes: Processes = 1) -> None:
    """LoRA adapter (PEFT); writes an adapter artifact on the base."""
    targets = [t.strip() for t in target_modules.split(",") if t.strip()] if target_modules else None
    _tune("lora", model, data, _train(epochs, max_steps, lr, batch_size, grad_accum, seq_len, seed, bf16, task),
          {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets}, name, resume, as_json, processes)


@tune_app.command("prompt")
def prompt(model: Model, data: Data, epochs: Epochs = 1.0, max_steps: MaxSteps = -1, lr: Lr = None,
           batch_size: Batch = 4, grad_accum: Accum = 1, seq_len: SeqLen = 256, seed: Seed = 0, bf16: Bf16 = "auto",
           task: Task = "auto",
           virtual_tokens: Annotated[int, typer.Option("--virtual-tokens", help="learned prompt length")] = 20,
           init_text: Annotated[str | None, typer.Option("--init-text", help="initialise from this text")] = None,
           name: Name = None, resume: Resume = False, as_json: Json = False, processes: Processes = 1) -> None:
    """Prompt tuning (PEFT); writes an adapter artifact on the base."""
    _tune("prompt", model, data, _train(epochs, max_steps, lr, batch_size, grad_accum, seq_len, seed, bf16, task),
          {"num_virtual_tokens": virtual_tokens, "init_text": init_text}, name, resume, as_json, processes)


@tune_app.command("adapter")
def adapter(model: Model, data: Data, epochs: Epochs = 1.0, max_steps: MaxSteps = -1, lr: Lr = None,
            batch_size: Batch = 4, grad_accum: Accum = 1, seq_len: SeqLen = 256, seed: Seed = 0,
            bf16: Bf16 = "auto", task: Task = "auto",
            reduction_factor: Annotated[int, typer.Option("--reduction-factor",
                                                          help="bottleneck = hidden / this")] = 16,
            name: Name = None, resume: Resume = False, as_json: Json = False, processes: Processes = 1) -> None:
    """Bottleneck adapter on each FFN output; writes an adapter artifact on the base."""
    _tune("adapter", model, data, _train(epochs, max_steps, lr, batch_size, grad_accum, seq_len, seed, bf16, task),
          {"reduction_factor": reduction_factor}, name, resume, as_json, processes)


@tune_app.command("recipe")
def recipe(model: Model, data: Data,
           recipe: Annotated[str, typer.Option("--recipe", help="lora+prompt, adapter+prompt, lora+adapter, "
                                               "or a YAML file of steps")] = "lora+prompt",
           epochs: Epochs = 1.0, max_steps: MaxSteps = -1, lr: Lr = None, batch_size: Batch = 4,
           grad_accum: Accum = 1, seq_len: SeqLen = 256, seed: Seed = 0, bf16: Bf16 = "auto", task: Task = "auto",
           name: Name = None, as_json: Json = False) -> None:
    """Several methods in sequence (e.g. LoRA then prompt tuning), each step an artifact."""

    def body() -> None:
        from llmpress.sources import resolve
        from llmpress.tune.recipes import load_recipe, run_recipe

        steps = load_recipe(recipe)
        base = resolve(model)
        with progress() as p:
            made = run_recipe(base, steps, data,
                              _train(epochs, max_steps, lr, batch_size, grad_accum, seq_len, seed, bf16, task),
                              progress=p, name=name)
        if as_json:
            print_json([{"id": a.id, "name": a.name, "format": a.manifest.format, "parent": a.manifest.parent,
                         "metrics": a.manifest.metrics.get("tune", {})} for a in made])
        else:
            for a in made:
                _show(a, False)

    run_guarded(body)


@tune_app.command("merge")
def merge(adapter: Annotated[str, typer.Argument(help="adapter artifact id or name")], name: Name = None,
          as_json: Json = False) -> None:
    """Fold a LoRA / bottleneck adapter into its base: a standalone model artifact."""

    def body() -> None:
        from llmpress.errors import ConfigError
        from llmpress.sources import resolve
        from llmpress.tune.adapters import merge_adapter

        art = resolve(adapter)
        if art.manifest.format != "adapter":
            raise ConfigError(f"{art.name!r} ({art.id}) is a {art.manifest.format} artifact, not an adapter",
                              "pass the id of an artifact made by llmpress tune lora|adapter")
        with console.status("merging"):
            merged = merge_adapter(art, name=name)
        if as_json:
            print_json({"id": merged.id, "name": merged.name, "parent": merged.manifest.parent,
                        "path": str(merged.path)})
        else:
            out.print(f"merged {art.name} ({art.id}) -> {merged.name} ({merged.id}) at {merged.path}")

    run_guarded(body)


@tune_app.command("methods")
def methods(as_json: Json = False) -> None:
    """List the tuning methods and recipes."""
    from llmpress.tune import METHODS
    from llmpress.tune.recipes import BUILTIN_RECIPES

    if as_json:
        print_json({"methods": {n: {"adapter": m.produces_adapter, "mergeable": m.mergeable,
                                    "description": m.description} for n, m in METHODS.items()},
                    "recipes": BUILTIN_RECIPES})
        return
    from rich.table import Table

    t = Table(title="tuning methods")
    for c in ("method", "output", "mergeable", "description"):
        t.add_column(c)
    for n, m in METHODS.items():
        t.add_row(n, "adapter" if m.produces_adapter else "model", ("yes" if m.mergeable else "no") if m.produces_adapter else "-", m.description)
    out.print(t)
    out.print("recipes: " + ", ".join(BUILTIN_RECIPES))


def register(app: typer.Typer) -> None:
    app.add_typer(tune_app, name="tune")
