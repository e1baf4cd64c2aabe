"""The `cinelab` command line: a thin typer app over the API functions.

Generic verbs live in `cinelab.commands` (one module per group of verbs, each with
`register(apps)`); each pipeline adds its own group through its `Pipeline.commands`.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

from cinelab import commands
from cinelab.pipelines.registry import list_pipelines

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Deep learning on cardiac and chest imaging: echo, cine MRI, chest X-ray.")
synth_app = typer.Typer(no_args_is_help=True, help="Write synthetic cohorts with known truth.")
measure_app = typer.Typer(no_args_is_help=True, help="Clinical measurements (EF, volumes).")
import_app = typer.Typer(no_args_is_help=True, help="Turn published weights into checkpoints.")
app.add_typer(synth_app, name="synth")
app.add_typer(measure_app, name="measure")
app.add_typer(import_app, name="import")


def _register_commands() -> None:
    """Generic verbs first (every cinelab.commands module), then each pipeline's group."""
    apps = {"main": app, "synth": synth_app, "measure": measure_app, "import": import_app}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(apps)
    for pipeline in list_pipelines():
        if pipeline.commands is not None:
            pipeline.commands(apps)


_register_commands()

if __name__ == "__main__":
    app()
