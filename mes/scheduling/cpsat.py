"""The flexible job shop on OR-Tools CP-SAT, warm-started from the dispatching-rule schedule.

Per operation: one start and end; per eligible unit an optional interval of that unit's
duration, exactly one present (SCH-1). Per unit: no overlap among its intervals and its
unavailable time (SCH-3); where operations of different families may meet, a circuit over the
unit's operations orders them and puts the changeover between consecutive ones (SCH-2).
Fixed operations are constants (SCH-5). A repair adds the minutes each operation moved, and a
penalty per operation that changed unit, to the objective, so what the breakdown does not touch
stays where it was.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise

from ortools.sat.python import cp_model

from mes.scheduling.dispatcher import dispatch
from mes.scheduling.problem import (
    UNIT_CHANGE_PENALTY_MIN,
    Assignment,
    Objective,
    Problem,
    Solution,
    Task,
    measure,
    objective_of,
    repair_cost,
)
from mes.scheduling.rules import merge, with_changeovers

# Past this many possible successions (arcs) over all units, an operation may only follow the
# ones near it in the warm start (by start time): the exact model of a plant-sized problem
# spends the whole time limit in presolve.
ARC_BUDGET = 40_000
NEIGHBOURS = 10
# A time limit below this gets the dispatching-rule schedule only: building and presolving the
# model would eat it.
MIN_SOLVER_S = 0.5


@dataclass
class _TaskVars:
    task: Task
    start: cp_model.IntVar
    end: cp_model.IntVar
    duration: cp_model.LinearExprT
    present: dict[str, cp_model.IntVar | int] = field(default_factory=dict)
    intervals: dict[str, cp_model.IntervalVar] = field(default_factory=dict)


def horizon_of(problem: Problem) -> int:
    """An upper bound on every end: the latest release, plus every operation at its longest
    with its largest changeover, plus the unavailable time that could be waited out."""
    work = sum(
        max(t.durations.values(), default=0) + _max_changeover(problem, t) for t in problem.tasks()
    )
    fixed_end = max((t.fixed[2] for t in problem.tasks() if t.fixed), default=0)
    base = max((j.release for j in problem.jobs), default=0) + work + fixed_end
    horizon = base
    for _ in range(3):
        waits = max(
            (
                sum(min(e, horizon) - s for s, e in merge(spans) if s < horizon)
                for spans in problem.unavailable.values()
            ),
            default=0,
        )
        horizon = base + waits
    return max(horizon, 1)


def _max_changeover(problem: Problem, task: Task) -> int:
    most = task.cleaning_min
    for unit in task.durations:
        for (src, _dst), minutes in problem.changeovers.get(unit, {}).items():
            if src == task.family:
                most = max(most, minutes)
    return most


def solve(problem: Problem, warm: Solution | None = None) -> Solution:
    """The best schedule found within the time limit (at worst the warm start)."""
    began = time.monotonic()
    warm = warm or dispatch(problem)
    remaining = problem.time_limit_s - (time.monotonic() - began)
    if remaining < MIN_SOLVER_S or not problem.jobs:
        warm.solve_s = time.monotonic() - began
        warm.moved = _moved(problem, warm.assignments)
        return warm
    horizon = max(horizon_of(problem), max((a.end for a in warm.assignments), default=0))
    model = cp_model.CpModel()
    tasks = _variables(model, problem, horizon)
    _precedences(model, problem, tasks)
    large = _units(model, problem, tasks, horizon, warm)
    objective, primary = _objective(model, problem, tasks, horizon)
    _hint(model, tasks, warm)
    solver = _solver(problem, problem.time_limit_s - (time.monotonic() - began), large)
    status = solver.solve(model)
    elapsed = time.monotonic() - began
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        # Never worse than the warm start: the hint alone is feasible, so this only happens
        # when the time ran out in presolve.
        warm.solve_s = elapsed
        warm.moved = _moved(problem, warm.assignments)
        return warm
    placed = [
        Assignment(
            tv.task.key,
            tv.task.job,
            tv.task.seq,
            next(u for u, lit in tv.present.items() if _value(solver, lit)),
            solver.value(tv.start),
            solver.value(tv.end),
        )
        for tv in tasks.values()
    ]
    makespan, tardiness, weighted, late = measure(problem, placed)
    value = objective_of(problem, makespan, weighted)
    if _worse(problem, warm, placed, value):
        # the solver's copy of the hint can lose to it only by rounding
        warm.solve_s = elapsed
        warm.moved = _moved(problem, warm.assignments)
        return warm
    exact = status == cp_model.OPTIMAL
    bound = None
    if primary is objective:
        bound = value if exact else solver.best_objective_bound
    return Solution(
        status="optimal" if exact else "feasible",
        method="cp-sat",
        assignments=with_changeovers(problem, placed),
        objective_value=float(value),
        bound=None if bound is None else float(bound),
        makespan=makespan,
        total_tardiness=tardiness,
        weighted_tardiness=weighted,
        late_jobs=late,
        solve_s=elapsed,
        moved=_moved(problem, placed),
    )


def _value(solver: cp_model.CpSolver, lit: cp_model.IntVar | int) -> bool:
    return bool(lit) if isinstance(lit, int) else solver.boolean_value(lit)


def _solver(problem: Problem, seconds: float, large: bool) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(MIN_SOLVER_S, seconds)
    solver.parameters.num_workers = problem.num_workers
    solver.parameters.random_seed = problem.random_seed
    if large:
        # Probing a plant-sized model takes most of a repair's ten seconds in presolve.
        solver.parameters.cp_model_probing_level = 0
    return solver


def _worse(problem: Problem, warm: Solution, placed: list[Assignment], value: int) -> bool:
    """Whether the solver's schedule loses to the warm start (a repair by its own cost)."""
    if problem.previous:
        warm_cost = repair_cost(problem, warm.assignments, warm.objective_value or 0.0)
        return repair_cost(problem, placed, value) > warm_cost
    return warm.objective_value is not None and value > warm.objective_value


def _variables(model: cp_model.CpModel, problem: Problem, horizon: int) -> dict[str, _TaskVars]:
    tasks: dict[str, _TaskVars] = {}
    for job in problem.jobs:
        for task in job.tasks:
            if task.fixed is not None:
                unit, start, end = task.fixed
                s = model.new_constant(start)
                e = model.new_constant(end)
                tv = _TaskVars(task, s, e, end - start)
                tv.present[unit] = 1
                tv.intervals[unit] = model.new_fixed_size_interval_var(
                    start, end - start, f"fix_{task.key}"
                )
                tasks[task.key] = tv
                continue
            low = min(task.durations.values())
            high = max(task.durations.values())
            s = model.new_int_var(job.release, horizon - low, f"s_{task.key}")
            e = model.new_int_var(job.release + low, horizon, f"e_{task.key}")
            if len(task.durations) == 1:
                ((unit, d),) = task.durations.items()
                tv = _TaskVars(task, s, e, d)
                tv.present[unit] = 1
                tv.intervals[unit] = model.new_interval_var(s, d, e, f"i_{task.key}")
                tasks[task.key] = tv
                continue
            d_var = model.new_int_var(low, high, f"d_{task.key}")
            tv = _TaskVars(task, s, e, d_var)
            model.add(e == s + d_var)
            for unit, d in task.durations.items():
                lit = model.new_bool_var(f"p_{task.key}_{unit}")
                tv.present[unit] = lit
                tv.intervals[unit] = model.new_optional_fixed_size_interval_var(
                    s, d, lit, f"i_{task.key}_{unit}"
                )
                model.add(d_var == d).only_enforce_if(lit)
            model.add_exactly_one(tv.present.values())
            tasks[task.key] = tv
    return tasks


def _precedences(model: cp_model.CpModel, problem: Problem, tasks: dict[str, _TaskVars]) -> None:
    for job in problem.jobs:
        for before, after in pairwise(job.tasks):
            a, b = tasks[before.key], tasks[after.key]
            if before.fixed is not None and after.fixed is not None:
                continue
            lag = before.lag_min
            if before.overlap_pct == 0:
                model.add(b.start >= a.end + lag)
                continue
            # 100 * start_b >= 100 * start_a + (100 - overlap) * duration_a + 100 * lag
            keep = 100 - before.overlap_pct
            model.add(100 * b.start >= 100 * a.start + keep * a.duration + 100 * lag)  # type: ignore[operator]
            model.add(b.end >= a.end + lag)


def _units(
    model: cp_model.CpModel,
    problem: Problem,
    tasks: dict[str, _TaskVars],
    horizon: int,
    warm: Solution,
) -> bool:
    """No overlap per unit with its unavailable time, and the changeover circuits; True when
    the circuits had to be restricted to neighbours (a large problem)."""
    per_unit: dict[str, list[_TaskVars]] = defaultdict(list)
    for tv in tasks.values():
        for unit in tv.intervals:
            per_unit[unit].append(tv)
    circuits = {
        unit: members
        for unit in problem.units
        if _needs_circuit(problem, unit, members := per_unit.get(unit, []))
    }
    arcs = sum(len(m) ** 2 for m in circuits.values())
    rank = _warm_rank(warm) if arcs > ARC_BUDGET else None
    for unit in problem.units:
        members = per_unit.get(unit, [])
        if not members:
            continue
        blocked = [
            model.new_fixed_size_interval_var(s, e - s, f"off_{unit}_{s}")
            for s, e in merge(problem.unavailable.get(unit, []))
            if s < horizon
        ]
        model.add_no_overlap([tv.intervals[unit] for tv in members] + blocked)
        if unit in circuits:
            _circuit(model, problem, unit, members, warm, rank)
    return rank is not None


def _needs_circuit(problem: Problem, unit: str, members: list[_TaskVars]) -> bool:
    """Operations of different families meet on the unit and some change costs time."""
    families = {tv.task.family for tv in members if tv.task.family is not None}
    if len(families) < 2:
        return False
    if any(tv.task.cleaning_min > 0 for tv in members if tv.task.family is not None):
        return True
    rules = problem.changeovers.get(unit, {})
    return any(
        minutes > 0 and src in families and dst in families for (src, dst), minutes in rules.items()
    )


def _warm_rank(warm: Solution) -> dict[str, int]:
    """Each operation's place in the warm start, by start time over all units."""
    ordered = sorted(warm.assignments, key=lambda a: (a.start, a.end, a.task))
    return {a.task: i for i, a in enumerate(ordered)}


def _circuit(
    model: cp_model.CpModel,
    problem: Problem,
    unit: str,
    members: list[_TaskVars],
    warm: Solution,
    rank: dict[str, int] | None,
) -> None:
    """The order of the unit's operations as a path through them, with the changeover on each
    step (SCH-2). Node 0 is the start and end of the path; an operation on another unit loops
    on itself. With ``rank`` (a large problem) an operation may only follow one within
    ``NEIGHBOURS`` places of it in the warm start, or its predecessor there; the arcs are
    hinted with the warm start's sequence."""
    sequence = [a.task for a in sorted(warm.assignments, key=lambda a: a.start) if a.unit == unit]
    follows = set(pairwise(sequence))
    first = sequence[0] if sequence else None
    last = sequence[-1] if sequence else None
    empty = model.new_bool_var("")
    model.add_hint(empty, not sequence)
    arcs: list[tuple[int, int, cp_model.LiteralT]] = [(0, 0, empty)]
    for i, a in enumerate(members, start=1):
        present = a.present[unit]
        if isinstance(present, int):
            present = model.new_constant(present)
        begin, finish = model.new_bool_var(""), model.new_bool_var("")
        model.add_hint(begin, a.task.key == first)
        model.add_hint(finish, a.task.key == last)
        arcs += [(0, i, begin), (i, 0, finish), (i, i, ~present)]
        for j, b in enumerate(members, start=1):
            if i == j:
                continue
            pair = (a.task.key, b.task.key)
            if (
                rank is not None
                and pair not in follows
                and abs(rank.get(pair[0], 0) - rank.get(pair[1], 0)) > NEIGHBOURS
            ):
                continue
            lit = model.new_bool_var("")
            model.add_hint(lit, pair in follows)
            arcs.append((i, j, lit))
            minutes = problem.changeover(unit, a.task, b.task)
            model.add(b.start >= a.end + minutes).only_enforce_if(lit)
    model.add_circuit(arcs)


def _objective(
    model: cp_model.CpModel, problem: Problem, tasks: dict[str, _TaskVars], horizon: int
) -> tuple[cp_model.LinearExprT, cp_model.LinearExprT]:
    """The planner's objective, and for a repair the moves on top of it."""
    makespan = model.new_int_var(0, horizon, "makespan")
    weighted: list[cp_model.LinearExprT] = []
    for job in problem.jobs:
        last = tasks[job.tasks[-1].key]
        model.add(makespan >= last.end)
        if job.due is not None and problem.objective != Objective.makespan:
            tardy = model.new_int_var(0, horizon, f"t_{job.key}")
            model.add(tardy >= last.end - job.due)
            weighted.append(job.weight * tardy)
    if problem.objective == Objective.makespan:
        primary: cp_model.LinearExprT = makespan
    elif problem.objective == Objective.weighted_tardiness:
        primary = cp_model.LinearExpr.sum(weighted)
    else:
        primary = problem.makespan_weight * makespan + cp_model.LinearExpr.sum(weighted)
    objective = primary
    moves = _moves(model, problem, tasks, horizon)
    if moves:
        weight = max(problem.stability_weight, 1)
        objective = weight * primary + cp_model.LinearExpr.sum(moves)  # type: ignore[operator]
    model.minimize(objective)
    return objective, primary


def _moves(
    model: cp_model.CpModel, problem: Problem, tasks: dict[str, _TaskVars], horizon: int
) -> list[cp_model.LinearExprT]:
    terms: list[cp_model.LinearExprT] = []
    for key, before in problem.previous.items():
        tv = tasks.get(key)
        if tv is None or tv.task.fixed is not None:
            continue
        shift = model.new_int_var(0, horizon, f"m_{key}")
        model.add_abs_equality(shift, tv.start - before.start)
        terms.append(shift)
        lit = tv.present.get(before.unit)
        if lit is None:
            terms.append(UNIT_CHANGE_PENALTY_MIN)
        elif not isinstance(lit, int):
            terms.append(UNIT_CHANGE_PENALTY_MIN * (1 - lit))
    return terms


def _hint(model: cp_model.CpModel, tasks: dict[str, _TaskVars], warm: Solution) -> None:
    for a in warm.assignments:
        tv = tasks.get(a.task)
        if tv is None or tv.task.fixed is not None:
            continue
        model.add_hint(tv.start, a.start)
        model.add_hint(tv.end, a.end)
        for unit, lit in tv.present.items():
            if not isinstance(lit, int):
                model.add_hint(lit, unit == a.unit)


def _moved(problem: Problem, assignments: list[Assignment]) -> int:
    """Operations of a repaired schedule on another unit or at another start than before."""
    count = 0
    for a in assignments:
        before = problem.previous.get(a.task)
        if before is not None and (before.unit != a.unit or before.start != a.start):
            count += 1
    return count
