"""The fedprune ServerApp (``[tool.flwr.app.components] serverapp``)."""

from __future__ import annotations

from fedprune.server.run_config import RunSettings
from fedprune.server.runner import run_federation
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config, then run the federation it describes."""
    settings = RunSettings.from_run_config(context.run_config)
    run_federation(grid, settings)
