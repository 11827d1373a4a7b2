"""Command-line interface: one thin module per command group.

Every module here that defines `register(app: typer.Typer)` is added to the `llmpress`
command by `cli.main`; modules keep heavy imports inside their command functions.
"""
