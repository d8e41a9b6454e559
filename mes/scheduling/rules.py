"""Scheduling rules as pure functions: what makes a schedule feasible, and which work orders
cannot be scheduled at all (reported per order, before any solver runs).

* SCH-1 every operation runs on one of its eligible units, after the previous operation of its
  order (transfer lag, overlap) and never before the order's release.
* SCH-2 a unit does one operation at a time, with the changeover of its matrix between
  operations of different families.
* SCH-3 no operation overlaps a unit's unavailable time (off shift, maintenance, calibration,
  planned downtime, breakdown); operations are not split across it.
* SCH-4 an order whose due date is before its release, or with an operation no eligible
  available unit can take, is reported with the reason and left out of the run.
* SCH-5 running operations, and published ones starting inside the firm horizon, stay where
  they are.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, replace
from itertools import pairwise

from mes.scheduling.problem import Assignment, Job, Problem, Task


@dataclass(frozen=True)
class JobProblem:
    """Why a work order was left out of a run (SCH-4)."""

    work_order: str
    seq: int | None
    reason: str


def free_windows(busy: list[tuple[int, int]], horizon: int) -> list[tuple[int, int]]:
    """The gaps of sorted, merged busy intervals within [0, horizon)."""
    gaps: list[tuple[int, int]] = []
    at = 0
    for start, end in busy:
        if start > at:
            gaps.append((at, min(start, horizon)))
        at = max(at, end)
        if at >= horizon:
            break
    if at < horizon:
        gaps.append((at, horizon))
    return [(s, e) for s, e in gaps if e > s]


def merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged, non-empty intervals."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def subtract(intervals: list[tuple[int, int]], span: tuple[int, int]) -> list[tuple[int, int]]:
    """``intervals`` without the time of ``span``."""
    out: list[tuple[int, int]] = []
    cut_start, cut_end = span
    for start, end in intervals:
        if end <= cut_start or start >= cut_end:
            out.append((start, end))
            continue
        if start < cut_start:
            out.append((start, cut_start))
        if end > cut_end:
            out.append((cut_end, end))
    return out


def longest_window(busy: list[tuple[int, int]], after: int, horizon: int) -> int:
    """The longest free stretch of a unit starting at or after ``after``."""
    return max((e - max(s, after) for s, e in free_windows(busy, horizon) if e > after), default=0)


def screen(problem: Problem, horizon: int) -> tuple[Problem, list[JobProblem]]:
    """Leave out the orders that cannot be scheduled (SCH-4), naming why; a fixed operation is
    never screened (it is already where it is)."""
    busy = {u: merge(problem.unavailable.get(u, [])) for u in problem.units}
    known = set(problem.units)
    kept: list[Job] = []
    problems: list[JobProblem] = []
    for job in problem.jobs:
        found = _job_problem(job, busy, known, horizon)
        if found is None:
            kept.append(job)
        else:
            problems.append(found)
    return replace(problem, jobs=kept), problems


def _job_problem(
    job: Job, busy: dict[str, list[tuple[int, int]]], known: set[str], horizon: int
) -> JobProblem | None:
    if job.due is not None and job.due < job.release:
        return JobProblem(job.key, None, "due date is before the release date (SCH-4)")
    for task in job.tasks:
        if task.fixed is not None:
            continue
        units = [u for u in task.durations if u in known]
        if not units:
            return JobProblem(
                job.key,
                task.seq,
                f"operation {task.seq} ({task.name}) has no eligible unit (SCH-4)",
            )
        fits = [
            u for u in units if longest_window(busy[u], job.release, horizon) >= task.durations[u]
        ]
        if not fits:
            longest = max(task.durations[u] for u in units)
            return JobProblem(
                job.key,
                task.seq,
                f"operation {task.seq} ({task.name}) needs up to {longest} min and no eligible "
                f"unit ({', '.join(sorted(units))}) is available that long within the horizon "
                "(SCH-3, SCH-4)",
            )
    return None


def violations(problem: Problem, assignments: list[Assignment]) -> list[str]:
    """Every broken rule of a schedule (empty when feasible): SCH-1, SCH-2, SCH-3, SCH-5."""
    found: list[str] = []
    tasks = {t.key: (job, t) for job in problem.jobs for t in job.tasks}
    by_task = {a.task: a for a in assignments}
    for key, (job, task) in tasks.items():
        a = by_task.get(key)
        if a is None:
            found.append(f"{job.key}/{task.seq}: not scheduled")
            continue
        found.extend(_task_violations(problem, job, task, a))
    for key in by_task.keys() - tasks.keys():
        found.append(f"{key}: assigned but not in the problem")
    for job in problem.jobs:
        for before, after in pairwise(job.tasks):
            a, b = by_task.get(before.key), by_task.get(after.key)
            if a is not None and b is not None:
                found.extend(_precedence_violations(job, before, a, b))
    found.extend(_unit_violations(problem, tasks, assignments))
    return found


def _task_violations(problem: Problem, job: Job, task: Task, a: Assignment) -> list[str]:
    where = f"{job.key}/{task.seq}"
    out: list[str] = []
    if task.fixed is not None:
        if (a.unit, a.start, a.end) != task.fixed:
            out.append(
                f"{where}: fixed at {task.fixed}, moved to {(a.unit, a.start, a.end)} (SCH-5)"
            )
        return out
    if a.unit not in task.durations:
        out.append(f"{where}: {a.unit} is not eligible (SCH-1)")
        return out
    if a.end - a.start != task.durations[a.unit]:
        out.append(f"{where}: lasts {a.end - a.start} min, not {task.durations[a.unit]} (SCH-1)")
    if a.start < job.release:
        out.append(f"{where}: starts at {a.start}, before the release at {job.release} (SCH-1)")
    busy = merge(problem.unavailable.get(a.unit, []))
    i = bisect.bisect_right(busy, (a.start, 1 << 62)) - 1
    for s, e in busy[max(i, 0) :]:
        if s >= a.end:
            break
        if e > a.start:
            out.append(f"{where}: overlaps unavailable time [{s}, {e}) of {a.unit} (SCH-3)")
            break
    return out


def _precedence_violations(job: Job, before: Task, a: Assignment, b: Assignment) -> list[str]:
    """The next operation may start once the non-overlapping part of this one has run plus the
    transfer lag, and may not end before this one's end plus the lag (SCH-1). Two operations
    that are both fixed (SCH-5) are history, not checked."""
    after = next((t for t in job.tasks if t.key == b.task), None)
    if before.fixed is not None and after is not None and after.fixed is not None:
        return []
    where = f"{job.key}/{before.seq}->{b.seq}"
    lag = before.lag_min
    earliest = start_after(before, a.start, a.end)
    out: list[str] = []
    if b.start < earliest:
        out.append(f"{where}: starts at {b.start}, before {earliest} (SCH-1)")
    if b.end < a.end + lag:
        out.append(
            f"{where}: ends at {b.end}, before its predecessor's end + lag {a.end + lag} (SCH-1)"
        )
    return out


def start_after(task: Task, start: int, end: int) -> int:
    """The earliest start of the operation after ``task`` (run over [start, end)): once all but
    its overlap has run, plus the transfer lag (SCH-1)."""
    return start + -(-(100 - task.overlap_pct) * (end - start) // 100) + task.lag_min


def _unit_violations(
    problem: Problem, tasks: dict[str, tuple[Job, Task]], assignments: list[Assignment]
) -> list[str]:
    out: list[str] = []
    per_unit: dict[str, list[Assignment]] = defaultdict(list)
    for a in assignments:
        per_unit[a.unit].append(a)
    for unit, items in per_unit.items():
        items.sort(key=lambda x: (x.start, x.end))
        for prev, nxt in pairwise(items):
            if prev.task not in tasks or nxt.task not in tasks:
                continue
            gap = problem.changeover(unit, tasks[prev.task][1], tasks[nxt.task][1])
            if nxt.start < prev.end + gap:
                out.append(
                    f"{unit}: {prev.job}/{prev.seq} [{prev.start}, {prev.end}) and "
                    f"{nxt.job}/{nxt.seq} at {nxt.start} need {gap} min between them (SCH-2)"
                )
    return out


def with_changeovers(problem: Problem, assignments: list[Assignment]) -> list[Assignment]:
    """The assignments with the changeover minutes each needs after the one before it on its
    unit."""
    tasks = {t.key: t for t in problem.tasks()}
    per_unit: dict[str, list[Assignment]] = defaultdict(list)
    for a in assignments:
        per_unit[a.unit].append(a)
    out: list[Assignment] = []
    for unit, items in per_unit.items():
        items.sort(key=lambda x: (x.start, x.end))
        prev: Assignment | None = None
        for a in items:
            minutes = 0
            if prev is not None and prev.task in tasks and a.task in tasks:
                minutes = problem.changeover(unit, tasks[prev.task], tasks[a.task])
            out.append(replace(a, changeover_min=minutes))
            prev = a
    out.sort(key=lambda x: (x.start, x.unit))
    return out
