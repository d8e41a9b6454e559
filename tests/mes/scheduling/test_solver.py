"""The scheduler's model on plain data: every returned schedule is feasible (precedence, no
overlap, calendars, changeovers), ft06 is solved to its optimum, and bad requests are reported
per work order (SCH-1..SCH-5)."""

from __future__ import annotations

import random

import pytest

from mes.scheduling.cpsat import horizon_of, solve
from mes.scheduling.dispatcher import dispatch
from mes.scheduling.problem import Job, Objective, Previous, Problem, Task
from mes.scheduling.rules import screen, violations
from mes.scheduling.runner import solve_problem

# Fisher and Thompson's 6x6 instance (Muth and Thompson, Industrial Scheduling, 1963):
# per job, (machine, minutes) in routing order; optimal makespan 55.
FT06 = [
    [(2, 1), (0, 3), (1, 6), (3, 7), (5, 3), (4, 6)],
    [(1, 8), (2, 5), (4, 10), (5, 10), (0, 10), (3, 4)],
    [(2, 5), (3, 4), (5, 8), (0, 9), (1, 1), (4, 7)],
    [(1, 5), (0, 5), (2, 5), (3, 3), (4, 8), (5, 9)],
    [(2, 9), (1, 3), (4, 5), (5, 4), (0, 3), (3, 1)],
    [(1, 3), (3, 3), (5, 9), (0, 10), (4, 4), (2, 1)],
]


def job_shop(rows: list[list[tuple[int, int]]], time_limit_s: float = 10) -> Problem:
    jobs = [
        Job(
            key=f"J{j}",
            tasks=tuple(
                Task(f"J{j}-{k}", f"J{j}", k + 1, "op", {f"M{m}": d})
                for k, (m, d) in enumerate(row)
            ),
        )
        for j, row in enumerate(rows)
    ]
    units = sorted({f"M{m}" for row in rows for m, _ in row})
    return Problem(jobs=jobs, units=units, time_limit_s=time_limit_s)


def test_ft06_is_solved_to_its_optimum() -> None:
    problem = job_shop(FT06)
    solution = solve(problem)
    assert solution.makespan == 55
    assert solution.status == "optimal"
    assert solution.bound == 55
    assert solution.gap == 0
    assert violations(problem, solution.assignments) == []


def test_the_dispatching_rule_schedule_is_feasible_and_answers_a_tiny_time_limit() -> None:
    problem = job_shop(FT06, time_limit_s=0.01)
    warm = dispatch(problem)
    assert violations(problem, warm.assignments) == []
    assert warm.makespan >= 55
    solution = solve(problem)
    assert solution.method == "dispatch"
    assert solution.makespan == warm.makespan


def plant_like(seed: int, jobs: int = 8) -> Problem:
    """A small flexible shop with everything a plant has: alternative units with their own
    speeds, families with changeovers, off-shift time, releases, due dates, transfer lags and
    overlaps, and one operation already running."""
    rng = random.Random(seed)
    units = ["EX-1", "EX-2", "BR-1", "BR-2", "CT-1"]
    stages = [("extrude", ["EX-1", "EX-2"]), ("braid", ["BR-1", "BR-2"]), ("coat", ["CT-1"])]
    out: list[Job] = []
    for j in range(jobs):
        family = rng.choice(["PGA", "PLGA", "PDO"])
        tasks = []
        for k, (name, eligible) in enumerate(stages):
            base = rng.randint(20, 90)
            durations = {u: base + i * rng.randint(0, 15) for i, u in enumerate(eligible)}
            tasks.append(
                Task(
                    key=f"W{j}-{k}",
                    job=f"W{j}",
                    seq=(k + 1) * 10,
                    name=name,
                    durations=durations,
                    family=family,
                    cleaning_min=rng.choice([0, 15]),
                    lag_min=rng.choice([0, 10]),
                    overlap_pct=rng.choice([0, 0, 50]),
                )
            )
        release = rng.choice([0, 0, 30, 120])
        out.append(
            Job(
                f"W{j}",
                tuple(tasks),
                release=release,
                due=release + rng.randint(150, 500),
                weight=rng.randint(1, 9),
            )
        )
    first = out[0].tasks[0]
    out[0] = Job(
        out[0].key,
        (Task(**{**first.__dict__, "fixed": ("EX-1", 0, 40)}), *out[0].tasks[1:]),
        release=0,
        due=out[0].due,
        weight=out[0].weight,
    )
    changeovers = {
        u: {("PGA", "PLGA"): 30, ("PLGA", "PGA"): 45, ("PDO", "PGA"): 60, ("PGA", "PDO"): 20}
        for u in units
    }
    unavailable = {
        # a night off every 8 hours on the coater, a maintenance window on BR-1
        "CT-1": [(480 * n + 420, 480 * n + 480) for n in range(10)],
        "BR-1": [(100, 220)],
    }
    return Problem(
        jobs=out,
        units=units,
        unavailable=unavailable,
        changeovers=changeovers,
        objective=Objective.mixed,
        time_limit_s=3,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_plant_like_schedules_keep_every_rule(seed: int) -> None:
    problem = plant_like(seed)
    warm = dispatch(problem)
    assert violations(problem, warm.assignments) == []
    solution = solve(problem, warm)
    assert violations(problem, solution.assignments) == []
    assert solution.objective_value is not None
    assert warm.objective_value is not None
    assert solution.objective_value <= warm.objective_value
    assert solution.bound is not None
    assert solution.bound <= solution.objective_value
    running = next(a for a in solution.assignments if a.task == "W0-0")
    assert (running.unit, running.start, running.end) == ("EX-1", 0, 40)


def test_changeovers_are_reported_before_the_operation_that_needs_them() -> None:
    tasks = [
        Task("A", "A", 10, "extrude", {"EX-1": 10}, family="PGA"),
        Task("B", "B", 10, "extrude", {"EX-1": 10}, family="PLGA"),
    ]
    problem = Problem(
        jobs=[Job("A", (tasks[0],)), Job("B", (tasks[1],), release=5)],
        units=["EX-1"],
        changeovers={"EX-1": {("PGA", "PLGA"): 30, ("PLGA", "PGA"): 30}},
        time_limit_s=2,
    )
    solution = solve(problem)
    assert solution.makespan == 50
    by_task = {a.task: a for a in solution.assignments}
    assert by_task["B"].start - by_task["A"].end == 30
    assert by_task["B"].changeover_min == 30
    assert violations(problem, solution.assignments) == []


def test_an_operation_never_spans_unavailable_time() -> None:
    problem = Problem(
        jobs=[Job("A", (Task("A1", "A", 10, "coat", {"CT-1": 60}),))],
        units=["CT-1"],
        unavailable={"CT-1": [(30, 100)]},
        time_limit_s=2,
    )
    solution = solve(problem)
    assert solution.assignments[0].start == 100


def test_orders_that_cannot_be_scheduled_are_named_with_the_reason() -> None:
    fine = Job("OK", (Task("t1", "OK", 10, "braid", {"BR-1": 30}),))
    due_first = Job("EARLY", (Task("t2", "EARLY", 10, "braid", {"BR-1": 30}),), release=100, due=50)
    no_unit = Job("ORPHAN", (Task("t3", "ORPHAN", 10, "braid", {}),))
    too_long = Job("LONG", (Task("t4", "LONG", 20, "coat", {"CT-1": 500}),))
    problem = Problem(
        jobs=[fine, due_first, no_unit, too_long],
        units=["BR-1", "CT-1"],
        # the coater works 8 hours at a time
        unavailable={"CT-1": [(480 * n, 480 * n + 60) for n in range(0, 50)]},
    )
    kept, problems = screen(problem, horizon_of(problem))
    assert [j.key for j in kept.jobs] == ["OK"]
    reasons = {p.work_order: p.reason for p in problems}
    assert "due date is before the release date (SCH-4)" in reasons["EARLY"]
    assert "no eligible unit" in reasons["ORPHAN"]
    assert "needs up to 500 min" in reasons["LONG"]
    assert "CT-1" in reasons["LONG"]
    solution, screened = solve_problem(problem)
    assert {p["work_order"] for p in screened} == {"EARLY", "ORPHAN", "LONG"}
    assert [a.job for a in solution.assignments] == ["OK"]


def test_a_repair_moves_what_the_breakdown_touches_and_keeps_the_rest() -> None:
    problem = plant_like(4, jobs=10)
    problem.objective = Objective.makespan
    before = solve(problem)
    assert violations(problem, before.assignments) == []
    # BR-2 breaks down for the whole horizon
    problem.previous = {a.task: Previous(a.unit, a.start, a.end) for a in before.assignments}
    problem.unavailable = {**problem.unavailable, "BR-2": [(0, horizon_of(problem))]}
    problem.stability_weight = 10
    repaired = solve(problem)
    assert violations(problem, repaired.assignments) == []
    assert not any(a.unit == "BR-2" for a in repaired.assignments)
    on_broken = sum(1 for a in before.assignments if a.unit == "BR-2")
    assert on_broken > 0
    assert on_broken <= repaired.moved < len(before.assignments)
