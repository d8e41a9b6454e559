"""``mes ingest`` (the line-data process) and ``mes connectors ...`` (configuration helpers)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectors.base import ConnectorError
from mes.context import AppContext
from mes.db import database_url_for_display
from mes.migrate import current_revision, head_revision
from mes.settings import load_settings
from mes.signals import stop_requested
from mes.telemetry.config import TelemetryConfigError, load_config
from mes.telemetry.runtime import TelemetryRuntime, tune_collector_for_streaming

console = Console()
err = Console(stderr=True)

connectors_app = typer.Typer(help="Line-data connectors.", no_args_is_help=True)


async def _serve_until_signalled(runtime: TelemetryRuntime, ctx: AppContext) -> None:
    with stop_requested() as stop:
        await runtime.start(ctx)
        tune_collector_for_streaming()
        try:
            await stop.wait()
        finally:
            await runtime.stop()


def ingest(
    config: Annotated[
        Path | None,
        typer.Option(help="Telemetry file (tags and connectors); default: the setting."),
    ] = None,
    spool: Annotated[
        Path | None, typer.Option(help="Local spool file; default: <var_dir>/spool/telemetry.db")
    ] = None,
    connector: Annotated[
        list[str] | None,
        typer.Option(help="Run only this connector (repeatable); default: all configured."),
    ] = None,
) -> None:
    """Run the line-data ingest: connectors -> validated samples -> database (a local spool
    while the database is unreachable). Stops cleanly on SIGTERM or Ctrl-C."""
    settings = load_settings()
    path = config or settings.telemetry_file
    try:
        telemetry = load_config(path)
    except (TelemetryConfigError, ConnectorError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if connector:
        unknown = set(connector) - {spec.name for spec in telemetry.connectors}
        if unknown:
            err.print(
                f"[bold red]error:[/] no connector named {', '.join(sorted(unknown))} in {path}"
            )
            raise typer.Exit(1)
        telemetry.connectors = [s for s in telemetry.connectors if s.name in connector]

    async def run() -> None:
        ctx = AppContext.build(settings)
        try:
            if await current_revision(ctx.db.engine) != head_revision():
                err.print(
                    "[bold red]error:[/] the database schema is not current: run `mes db upgrade`"
                )
                raise typer.Exit(1)
            runtime = TelemetryRuntime.build(ctx, telemetry, spool=spool)
            console.print(
                f"ingest: {len(telemetry.tags)} tags, connectors "
                f"{', '.join(s.name for s in telemetry.connectors) or 'none'} "
                f"-> {database_url_for_display(settings.database_url)}"
            )
            await _serve_until_signalled(runtime, ctx)
        finally:
            await ctx.close()

    try:
        asyncio.run(run())
    except TelemetryConfigError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc


@connectors_app.command("list")
def list_connectors(
    config: Annotated[Path | None, typer.Option(help="Telemetry file.")] = None,
) -> None:
    """Validate the telemetry file and list its connectors and tag count."""
    settings = load_settings()
    path = config or settings.telemetry_file
    try:
        telemetry = load_config(path)
    except (TelemetryConfigError, ConnectorError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    table = Table(title=f"{path}: {len(telemetry.tags)} tags")
    table.add_column("connector")
    table.add_column("kind")
    for spec in telemetry.connectors:
        table.add_row(spec.name, spec.kind)
    console.print(table)


@connectors_app.command("browse")
def browse(
    endpoint: Annotated[str, typer.Argument(help="OPC UA endpoint, opc.tcp://host:port/path")],
    root: Annotated[str, typer.Option(help="Node to start from.")] = "i=85",
    depth: Annotated[int, typer.Option(min=1, max=20, help="How deep to browse.")] = 5,
) -> None:
    """Browse an OPC UA server and print its variables as ``nodes:`` entries for a
    connector's configuration."""
    from connectors.opcua.browse import browse as browse_nodes
    from connectors.opcua.browse import render_nodes_yaml

    async def run() -> str:
        nodes = await browse_nodes(endpoint, root=root, max_depth=depth)
        return render_nodes_yaml(nodes)

    try:
        console.print(asyncio.run(run()), markup=False, highlight=False)
    except (ConnectorError, OSError, TimeoutError) as exc:
        err.print(f"[bold red]error:[/] {endpoint}: {exc}")
        raise typer.Exit(1) from exc
