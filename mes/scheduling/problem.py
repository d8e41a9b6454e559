"""The scheduling problem and its answer as plain data (no database, no clock).

Times are whole minutes from the horizon start. The service builds a :class:`Problem` from the
database; the dispatcher and the CP-SAT model solve it, in a worker process, so everything here
is picklable.

A flexible job shop with plant features:

* a job is a work order: its tasks (operations) run in routing order, each on one of its
  eligible units, with a duration per unit (setup + quantity x rate + fixed);
* consecutive tasks: the next starts no earlier than this one's end plus the transfer lag, or -
  with an overlap - once ``(100 - overlap_pct)%`` of this one has run (plus the lag), and never
  ends before this one ends plus the lag;
* a unit does one task at a time; between tasks of different changeover families it needs
  the changeover minutes of its matrix (SCH-2);
* a unit's unavailable intervals (off-shift time, maintenance and calibration windows,
  planned downtime, a breakdown) are never overlapped by a task (SCH-3);
* a task never starts before its job's release (SCH-4); a fixed task (running, or inside the
  firm horizon) keeps its unit and times (SCH-5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Objective(StrEnum):
    makespan = "makespan"
    weighted_tardiness = "weighted_tardiness"
    mixed = "mixed"


@dataclass(frozen=True)
class Task:
    key: str  # the operation id
    job: str  # the work order number
    seq: int
    name: str
    durations: dict[str, int]  # eligible unit -> minutes on it (>= 1)
    family: str | None = None
    cleaning_min: int = 0  # after this task, before a task of another family (if no rule)
    lag_min: int = 0  # transfer lag to the next task of the job
    overlap_pct: int = 0  # how much of this task the next may overlap
    fixed: tuple[str, int, int] | None = None  # (unit, start, end): running or frozen


@dataclass(frozen=True)
class Job:
    key: str  # the work order number
    tasks: tuple[Task, ...]
    release: int = 0
    due: int | None = None
    weight: int = 1  # from the priority: 1 (most urgent) weighs 9, 9 weighs 1


@dataclass(frozen=True)
class Previous:
    """Where a task was in the schedule being repaired."""

    unit: str
    start: int
    end: int


@dataclass
class Problem:
    jobs: list[Job]
    units: list[str]
    unavailable: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # unit -> (from family, to family) -> minutes
    changeovers: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)
    objective: Objective = Objective.makespan
    # mixed: makespan_weight * makespan + weighted tardiness
    makespan_weight: int = 1
    time_limit_s: float = 30.0
    num_workers: int = 2
    # Repair: keep these where they were unless the objective gains (stability weight per
    # minute moved, and per unit changed).
    previous: dict[str, Previous] = field(default_factory=dict)
    stability_weight: int = 0
    random_seed: int = 0

    def tasks(self) -> list[Task]:
        return [t for j in self.jobs for t in j.tasks]

    def changeover(self, unit: str, before: Task, after: Task) -> int:
        """Minutes between ``before`` and ``after`` on ``unit`` (SCH-2): the unit's rule for
        the pair of families, else the cleaning minutes of ``before`` when the family changes."""
        if before.family is None or after.family is None or before.family == after.family:
            return 0
        rule = self.changeovers.get(unit, {}).get((before.family, after.family))
        return rule if rule is not None else before.cleaning_min


@dataclass(frozen=True)
class Assignment:
    task: str
    job: str
    seq: int
    unit: str
    start: int
    end: int
    changeover_min: int = 0  # minutes of changeover on the unit right before this task


@dataclass
class Solution:
    status: str  # optimal, feasible, infeasible, unknown
    method: str  # cp-sat or dispatch
    assignments: list[Assignment]
    objective_value: float | None = None
    bound: float | None = None
    makespan: int = 0
    total_tardiness: int = 0
    weighted_tardiness: int = 0
    late_jobs: list[str] = field(default_factory=list)
    solve_s: float = 0.0
    moved: int = 0  # repair: tasks whose unit or start changed

    @property
    def gap(self) -> float | None:
        if self.objective_value is None or self.bound is None:
            return None
        if self.objective_value == 0:
            return 0.0
        return max(0.0, (self.objective_value - self.bound) / abs(self.objective_value))


def weight_of_priority(priority: int) -> int:
    """Priority 1 (most urgent) .. 9 as a tardiness weight 9 .. 1."""
    return 10 - priority


def measure(problem: Problem, assignments: list[Assignment]) -> tuple[int, int, int, list[str]]:
    """Makespan, total tardiness, weighted tardiness and late jobs of a set of assignments."""
    end_of: dict[str, int] = {}
    for a in assignments:
        end_of[a.job] = max(end_of.get(a.job, 0), a.end)
    makespan = max(end_of.values(), default=0)
    total = weighted = 0
    late: list[str] = []
    for job in problem.jobs:
        if job.due is None or job.key not in end_of:
            continue
        tardy = max(0, end_of[job.key] - job.due)
        if tardy:
            late.append(job.key)
            total += tardy
            weighted += tardy * job.weight
    return makespan, total, weighted, late


# A repair's penalty for an operation put on another unit than before, in minutes moved.
UNIT_CHANGE_PENALTY_MIN = 60


def repair_cost(problem: Problem, assignments: list[Assignment], objective: float) -> float:
    """What a repair minimises: the objective weighted by ``stability_weight``, plus every
    minute an operation moved and a penalty per operation that changed unit."""
    moved = 0
    for a in assignments:
        before = problem.previous.get(a.task)
        if before is not None:
            moved += abs(a.start - before.start)
            if before.unit != a.unit:
                moved += UNIT_CHANGE_PENALTY_MIN
    return max(problem.stability_weight, 1) * objective + moved


def objective_of(problem: Problem, makespan: int, weighted_tardiness: int) -> int:
    if problem.objective == Objective.makespan:
        return makespan
    if problem.objective == Objective.weighted_tardiness:
        return weighted_tardiness
    return problem.makespan_weight * makespan + weighted_tardiness
