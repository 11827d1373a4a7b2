"""`llmpress explain MODEL --prompt TEXT`: attention heatmaps, rollout and next-token attribution."""

from __future__ import annotations

from pathlib import Path

import typer

from llmpress.cli.common import console, out, print_json, run_guarded


def explain_cmd(
    model: str = typer.Argument(..., help="builtin:NAME, artifact id/name, HF dir (quantized ones too)."),
    prompt: str = typer.Option(..., "--prompt", help="Text whose next token is explained."),
    layer: int | None = typer.Option(None, "--layer", help="Only this layer's heatmaps (default: all)."),
    head: int | None = typer.Option(None, "--head", help="Only this head's heatmaps (default: all)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default reports/explain-...)."),
    ig_steps: int = typer.Option(32, "--ig-steps", help="Integrated-gradients steps."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Write PNG + HTML: attention per layer/head, attention rollout, per-token attribution (IG, grad x input)."""

    def body() -> None:
        from rich.table import Table

        from llmpress.explain import ExplainConfig, explain

        with console.status("explaining..."):
            res = explain(ExplainConfig(model=model, prompt=prompt, layer=layer, head=head, out_dir=out_dir,
                                        ig_steps=ig_steps))
        if as_json:
            print_json(res.to_dict())
            return
        t = Table(title=f"explain {res.model}: next token {res.next_token!r} (p={res.next_token_prob:.3f})")
        for c in ("token", "integrated gradients", "gradient x input", "rollout (last row)"):
            t.add_column(c, justify="left" if c == "token" else "right")
        for i, tok in enumerate(res.tokens):
            t.add_row(repr(tok), f"{res.integrated_gradients[i]:+.4f}", f"{res.gradient_x_input[i]:+.4f}",
                      f"{res.rollout_last_row[i]:.3f}")
        out.print(t)
        console.print(f"html: {res.files['html']}  pngs: {res.out_dir}")

    run_guarded(body)


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_cmd)
