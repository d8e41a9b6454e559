"""The ``mes`` command."""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

import mes
from mes.background.jobs import JOBS
from mes.context import AppContext
from mes.db import database_url_for_display
from mes.demo import seed_history, seed_work
from mes.errors import MesError
from mes.identity import keys
from mes.identity import service as identity
from mes.identity.schemas import ApiKeyCreate, UserCreate
from mes.migrate import current_revision, head_revision, upgrade
from mes.models import Role
from mes.plant.loader import PlantFileError, load_plant_file
from mes.principal import system_principal
from mes.settings import MesSettings, load_settings
from mes.signals import stop_requested
from mes.simulator.cli import simulate
from mes.telemetry.cli import connectors_app, ingest
from mes.telemetry.demo import live_plant

app = typer.Typer(
    help="Manufacturing execution system for absorbable implants.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="User accounts.", no_args_is_help=True)
plant_app = typer.Typer(help="Plant model.", no_args_is_help=True)
audit_app = typer.Typer(help="Audit trail.", no_args_is_help=True)
keys_app = typer.Typer(help="Machine API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(plant_app, name="plant")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(connectors_app, name="connectors")
app.command("ingest")(ingest)
app.command("simulate")(simulate)

console = Console()
err = Console(stderr=True)
T = TypeVar("T")

DEMO_PASSWORD = "demo-pass-2026!"
DEMO_USERS: tuple[tuple[str, str, tuple[Role, ...]], ...] = (
    ("admin", "Ada Admin", (Role.admin,)),
    ("supervisor", "Sam Supervisor", (Role.supervisor,)),
    ("planner", "Pat Planner", (Role.planner,)),
    ("qa", "Quinn Quality", (Role.qa,)),
    ("operator1", "Olga Operator", (Role.operator,)),
    ("operator2", "Omar Operator", (Role.operator,)),
)


def _run(settings: MesSettings, work: Callable[[AppContext], Awaitable[T]]) -> T:
    async def runner() -> T:
        ctx = AppContext.build(settings)
        try:
            return await work(ctx)
        finally:
            await ctx.close()

    try:
        return asyncio.run(runner())
    except (SQLAlchemyError, OSError) as exc:
        where = database_url_for_display(settings.database_url)
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        if "no such table" in detail or "does not exist" in detail:
            detail += " (run `mes db upgrade` first)"
        raise _fail(f"database {where}: {detail}") from exc


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # The protocol libraries log every request at INFO; the connectors log what matters.
        # APScheduler logs every run of every background job at INFO; the jobs log what they did.
        for chatty in ("asyncua", "amqtt", "transitions", "apscheduler"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


@app.command()
def version() -> None:
    """Print the MES version."""
    console.print(mes.__version__)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=32, help="Worker processes, one event loop each.")
    ] = 1,
) -> None:
    """Run the API server (upgrades the database schema first). With several workers the
    schema is upgraded once before they start; use PostgreSQL for more than one."""
    import uvicorn

    from mes.app import create_app

    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    settings = load_settings(**overrides)
    console.print(
        f"MES {mes.__version__} on [bold]http://{settings.host}:{settings.port}[/] "
        f"- database {database_url_for_display(settings.database_url)}"
    )
    if workers > 1:

        async def prepare(ctx: AppContext) -> None:
            await upgrade(ctx.db.engine)

        _run(settings, prepare)
        uvicorn.run(
            "mes.app:worker_app",
            factory=True,
            workers=workers,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            proxy_headers=False,
        )
        return
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=False,
    )


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Prepare the demo database and exit.")
    ] = False,
    broker: Annotated[
        str | None,
        typer.Option(
            envvar="MES_DEMO_BROKER_URL",
            help="Use this MQTT broker (mqtt://host:port) instead of the embedded one.",
        ),
    ] = None,
    broker_port: Annotated[
        int, typer.Option(help="Port of the embedded broker (a free one if taken).")
    ] = 1883,
    opcua_port: Annotated[
        int, typer.Option(help="Port of the simulator's OPC UA server (a free one if taken).")
    ] = 4840,
    no_plant: Annotated[
        bool, typer.Option("--no-plant", help="Serve without the plant simulator and ingest.")
    ] = False,
) -> None:
    """Run the demo: SQLite database in ./var, the plant model loaded, demo users created, and
    a live plant: the simulator over OPC UA and MQTT (an embedded broker unless --broker) with
    its line data ingested."""
    import uvicorn

    from mes.app import create_app

    # The server runs the background jobs itself (due orders, equipment due dates, the
    # telemetry roll-up): the demo has no separate `mes background` process.
    settings = load_settings(host=host, port=port, background_enabled=True)
    url = settings.database_url
    if settings.env == "production":
        raise _fail("the demo never runs with MES_ENV=production")

    try:
        _run(settings, lambda ctx: _prepare_demo(ctx, settings))
    except PlantFileError as exc:
        raise _fail(str(exc)) from exc
    base = f"http://{host}:{port}"
    _print_demo_access(base, url)
    if no_serve:
        return
    console.print(f"Jobs:      {', '.join(s.name for s in JOBS if s.enabled(settings))}")
    if no_plant:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level)
        return
    live = _serve_with_plant(
        settings, host, port, broker_url=broker, broker_port=broker_port, opcua_port=opcua_port
    )
    try:
        asyncio.run(live)
    except ValueError as exc:
        raise _fail(str(exc)) from exc


async def _prepare_demo(ctx: AppContext, settings: MesSettings) -> None:
    """Migrate, load the plant file, create the demo users and seed the demo's history."""
    await upgrade(ctx.db.engine)
    report = await load_plant_file(ctx, system_principal("demo"), settings.plant_file)
    console.print(
        f"plant model from {settings.plant_file}: created {report.created or 0}, "
        f"updated {report.updated or 0}"
    )
    async with ctx.db.sessionmaker() as session, session.begin():
        for username, full_name, roles in DEMO_USERS:
            if await identity.find_user(session, username) is None:
                await identity.create_user(
                    ctx,
                    session,
                    system_principal("demo"),
                    UserCreate(
                        username=username,
                        full_name=full_name,
                        password=DEMO_PASSWORD,
                        roles=list(roles),
                        reason="demo account",
                    ),
                )
    if await seed_history(ctx, DEMO_PASSWORD):
        console.print("demo history: GA-2611-01 ... SUT-2611-01 (load EO-2611-014, shipped)")
    if await seed_work(ctx, DEMO_PASSWORD, settings.work_masters_file):
        console.print(
            "demo work: masters from "
            f"{settings.work_masters_file}, orders WO-2611-101/102/201 released, "
            "pilot batch WO-2611-P01"
        )


def _print_demo_access(base: str, url: str) -> None:
    table = Table(title="Demo logins (password for all: " + DEMO_PASSWORD + ")")
    table.add_column("username")
    table.add_column("name")
    table.add_column("roles")
    for username, full_name, roles in DEMO_USERS:
        table.add_row(username, full_name, ", ".join(roles))
    console.print(table)
    console.print(f"API docs:  [bold]{base}/docs[/]")
    console.print(f"Health:    {base}/api/v1/health")
    console.print(f"Database:  {database_url_for_display(url)}")


async def _serve_with_plant(
    settings: MesSettings,
    host: str,
    port: int,
    *,
    broker_url: str | None,
    broker_port: int,
    opcua_port: int,
) -> None:
    """Serve the API with the plant simulator, its broker and the ingest in this process."""
    import uvicorn

    from mes.app import create_app

    ctx = AppContext.build(settings)
    try:
        plant = live_plant(
            ctx, broker_url=broker_url, broker_port=broker_port, opcua_port=opcua_port
        )
        async with plant as live:
            where = "embedded amqtt" if live.embedded_broker else "broker"
            console.print(
                f"Plant:     simulator on {live.opcua_endpoint} (OPC UA) and "
                f"mqtt://{live.broker[0]}:{live.broker[1]} ({where}); "
                f"live values at http://{host}:{port}/api/v1/tags"
            )
            app = create_app(settings, context=ctx, migrate=False)
            server = uvicorn.Server(
                uvicorn.Config(app, host=host, port=port, log_level=settings.log_level)
            )
            await server.serve()
    finally:
        await ctx.close()


# --- background ----------------------------------------------------------------------------------


@app.command()
def background(
    once: Annotated[
        str | None,
        typer.Option("--once", metavar="NAME", help="Run this job once now and exit."),
    ] = None,
    list_jobs: Annotated[bool, typer.Option("--list", help="List the jobs and exit.")] = False,
) -> None:
    """Run the background jobs until SIGTERM or Ctrl-C: due work orders made ready, units past
    a calibration, maintenance or qualification date taken out of use, the telemetry roll-up,
    scheduling runs. Any number may run: a database lease lets one of them do the work and
    another take over when it stops. Runs whatever MES_BACKGROUND_ENABLED says (that setting
    is for the API processes)."""
    settings = load_settings()
    if list_jobs:
        _print_jobs(settings)
        return
    if once is None:
        _run(settings, lambda ctx: _run_background(ctx, settings))
        return
    name = once

    async def run_one(ctx: AppContext) -> object:
        from mes.background.runner import BackgroundRunner

        return await BackgroundRunner(ctx).run_once(name)

    try:
        result = _run(settings, run_one)
    except typer.Exit:
        raise
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:  # the job's own error, shown to whoever ran it
        raise _fail(f"{name}: {type(exc).__name__}: {exc}") from exc
    console.print(f"{name}: done {result if result is not None else ''}".rstrip())


def _print_jobs(settings: MesSettings) -> None:
    table = Table(title="background jobs")
    table.add_column("job")
    table.add_column("every", justify="right")
    table.add_column("enabled")
    for spec in JOBS:
        enabled = spec.enabled(settings)
        every = f"{spec.interval(settings).total_seconds():g} s" if enabled else "-"
        table.add_row(spec.name, every, "yes" if enabled else "no (settings)")
    console.print(table)


async def _run_background(ctx: AppContext, settings: MesSettings) -> None:
    """The jobs (one process holds the lease) and, for the scheduler role, the solver runner,
    until SIGTERM or Ctrl-C."""
    from mes.background.runner import BackgroundRunner
    from mes.scheduling.runner import SolverRunner

    if await current_revision(ctx.db.engine) != head_revision():
        raise _fail("the database schema is not current: run `mes db upgrade`")
    runner = BackgroundRunner(ctx)
    with stop_requested() as stop:
        await runner.start()
        if settings.schedule_runner_enabled:
            # The scheduler role also solves queued scheduling runs (with the API processes).
            ctx.solver = SolverRunner(ctx)
            ctx.solver.start()
        console.print(
            f"background: {', '.join(runner.jobs)} as {runner.lease.holder} "
            f"({'lease holder' if runner.is_leader else 'standby'}) "
            f"- database {database_url_for_display(settings.database_url)}"
        )
        try:
            await stop.wait()
        finally:
            if ctx.solver is not None:
                await ctx.solver.stop()
            await runner.stop()


# --- db ------------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations to the configured database."""
    settings = load_settings()

    async def work(ctx: AppContext) -> str | None:
        await upgrade(ctx.db.engine)
        return await current_revision(ctx.db.engine)

    revision = _run(settings, work)
    console.print(
        f"database {database_url_for_display(settings.database_url)} "
        f"at revision [bold]{revision}[/]"
    )


@db_app.command("current")
def db_current() -> None:
    """Show the database's schema revision and the code's head revision."""
    settings = load_settings()

    async def work(ctx: AppContext) -> str | None:
        return await current_revision(ctx.db.engine)

    revision = _run(settings, work)
    console.print(f"database: {revision or '(empty)'}   code head: {head_revision()}")
    if revision != head_revision():
        raise typer.Exit(1)


# --- users ---------------------------------------------------------------------------------------


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="Login name (never reused).")],
    full_name: Annotated[str, typer.Option("--full-name", help="Printed name for signatures.")],
    role: Annotated[list[Role], typer.Option("--role", help="Role; repeat for several.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a user account (audited as the CLI)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            raise _fail("passwords differ")
    try:
        data = UserCreate(
            username=username,
            full_name=full_name,
            password=password,
            roles=role,
            reason=f"created with mes users create by {_os_user()}",
        )
    except ValidationError as exc:
        raise _fail(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from exc
    settings = load_settings()

    async def work(ctx: AppContext) -> None:
        await upgrade(ctx.db.engine)
        async with ctx.db.sessionmaker() as session, session.begin():
            await identity.create_user(ctx, session, system_principal(f"cli:{_os_user()}"), data)

    try:
        _run(settings, work)
    except MesError as exc:
        raise _fail(exc.detail) from exc
    console.print(f"user [bold]{username}[/] created with roles {', '.join(role)}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Key name, e.g. the equipment or gateway.")],
    source: Annotated[list[str], typer.Option("--source", help="Telemetry source it may send.")],
) -> None:
    """Issue a machine API key; the secret is printed once."""
    settings = load_settings()
    try:
        data = ApiKeyCreate(
            name=name, sources=source, reason=f"issued with mes keys create by {_os_user()}"
        )
    except ValidationError as exc:
        raise _fail(str(exc)) from exc

    async def work(ctx: AppContext) -> str:
        await upgrade(ctx.db.engine)
        async with ctx.db.sessionmaker() as session, session.begin():
            issued = await keys.create_api_key(
                ctx, session, system_principal(f"cli:{_os_user()}"), data
            )
            return issued.api_key

    try:
        secret = _run(settings, work)
    except MesError as exc:
        raise _fail(exc.detail) from exc
    console.print(f"API key [bold]{name}[/] (shown once): {secret}")


# --- plant ---------------------------------------------------------------------------------------


@plant_app.command("load")
def plant_load(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Plant YAML file.")],
) -> None:
    """Create or update the plant model from a YAML file, in one audited transaction."""
    settings = load_settings()

    async def work(ctx: AppContext) -> object:
        await upgrade(ctx.db.engine)
        return await load_plant_file(ctx, system_principal(f"cli:{_os_user()}"), file)

    try:
        report = _run(settings, work)
    except PlantFileError as exc:
        for problem in exc.problems:
            err.print(f"[red]{exc.path}[/]: {problem}")
        raise typer.Exit(1) from exc
    except MesError as exc:
        raise _fail(exc.detail) from exc
    from mes.plant.loader import LoadReport

    assert isinstance(report, LoadReport)
    table = Table(title=f"plant model from {file}")
    table.add_column("record")
    table.add_column("created", justify="right")
    table.add_column("updated", justify="right")
    table.add_column("unchanged", justify="right")
    for kind in ("equipment_class", "material", "equipment"):
        table.add_row(
            kind,
            str(report.created.get(kind, 0)),
            str(report.updated.get(kind, 0)),
            str(report.unchanged.get(kind, 0)),
        )
    console.print(table)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")


# --- audit ---------------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit hash chain; exit 1 naming the first broken entry (AT-5)."""
    from mes.audit.service import ChainVerification, verify_chain

    settings = load_settings()

    async def work(ctx: AppContext) -> ChainVerification:
        async with ctx.db.sessionmaker() as session:
            return await verify_chain(session)

    result = _run(settings, work)
    if result.ok:
        console.print(
            f"[green]audit trail intact[/]: {result.checked} entries, "
            f"head seq {result.head_seq} hash {result.head_hash[:16]}..."
        )
        return
    err.print(
        f"[bold red]audit trail broken[/] at entry seq={result.broken_seq} "
        f"id={result.broken_id}: {result.problem} "
        f"({result.checked} entries before it verified)"
    )
    raise typer.Exit(1)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def main() -> None:
    app()
