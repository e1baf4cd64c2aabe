"""Pipeline command groups for the CLI: each module here defines `register(apps)`.

`cinelab.cli` imports every module in this package and calls its `register` with the
typer apps ({"main", "synth", "measure", "import"}), so a pipeline adds its commands in
one file of its own.
"""
