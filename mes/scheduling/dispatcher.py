"""A fast dispatching-rule schedule: the solver's warm start, and the answer when its time
limit is too short to improve on it.

Active schedule generation: of the operations whose predecessor is placed, those that could
start before the earliest possible completion of any of them compete, and a priority rule
picks one (most work remaining for makespan, least slack for tardiness, the previous plan's
order for a repair); it goes on its unit that finishes it first, inserted into the first gap
of that unit's timeline that fits it with its changeovers (SCH-2) and clear of unavailable time
(SCH-3).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from mes.scheduling.problem import (
    Assignment,
    Job,
    Previous,
    Problem,
    Solution,
    Task,
    measure,
    objective_of,
    repair_cost,
)
from mes.scheduling.rules import merge, start_after, with_changeovers


@dataclass
class _Timeline:
    """A unit's busy time, sorted and never overlapping: unavailable stretches (no task) and
    placed operations."""

    starts: list[int] = field(default_factory=list)
    items: list[tuple[int, int, Task | None]] = field(default_factory=list)

    def add(self, start: int, end: int, task: Task | None) -> None:
        i = bisect.bisect_right(self.starts, start)
        self.starts.insert(i, start)
        self.items.insert(i, (start, end, task))

    def earliest(
        self, est: int, duration: int, task: Task, gap: Callable[[Task, Task], int]
    ) -> int:
        """The earliest start at or after ``est`` where ``task`` fits with its changeovers."""
        k = bisect.bisect_right(self.starts, est)
        items = self.items
        while True:
            start = est
            if k > 0:
                _, p_end, p_task = items[k - 1]
                start = max(start, p_end + (gap(p_task, task) if p_task is not None else 0))
            if k == len(items):
                return start
            n_start, _, n_task = items[k]
            after = gap(task, n_task) if n_task is not None else 0
            if start + duration + after <= n_start:
                return start
            k += 1


Rule = Callable[[Job, Task, int], tuple[float, ...]]


def _remaining(job: Job, index: int) -> int:
    return sum(min(t.durations.values()) for t in job.tasks[index:] if t.durations)


def dispatch(problem: Problem, rule: str = "auto") -> Solution:
    """The best of the applicable priority rules (or just ``rule``)."""
    if rule != "auto":
        return _dispatch(problem, rule)
    rules = ["mwkr", "slack", "edd"] if problem.objective != "makespan" else ["mwkr", "spt"]
    if problem.previous:
        rules = ["previous", *rules]
    best: tuple[float, Solution] | None = None
    for name in rules:
        found = _dispatch(problem, name)
        cost = found.objective_value or 0.0
        if problem.previous:
            cost = repair_cost(problem, found.assignments, cost)
        if best is None or cost < best[0]:
            best = (cost, found)
    assert best is not None
    return best[1]


def _dispatch(problem: Problem, rule: str) -> Solution:
    state = _Dispatch(problem, previous=problem.previous if rule == "previous" else {})
    state.place_fixed()
    state.run(_rule(problem, rule))
    placed = state.placed
    makespan, tardiness, weighted, late = measure(problem, placed)
    return Solution(
        status="feasible",
        method="dispatch",
        assignments=with_changeovers(problem, placed),
        objective_value=float(objective_of(problem, makespan, weighted)),
        makespan=makespan,
        total_tardiness=tardiness,
        weighted_tardiness=weighted,
        late_jobs=late,
    )


Slot = tuple[int, int, str]
"""(end, start, unit) of an operation's best placement: tuples compare by end first."""


class _Dispatch:
    """One dispatch pass: the units' timelines, what is placed, and where each job stands."""

    def __init__(self, problem: Problem, previous: dict[str, Previous]) -> None:
        self.timelines = {u: _Timeline() for u in problem.units}
        for unit, spans in problem.unavailable.items():
            if unit in self.timelines:
                for start, end in merge(spans):
                    self.timelines[unit].add(start, end, None)
        self.jobs = {j.key: j for j in problem.jobs}
        self.placed: list[Assignment] = []
        self.position = {j.key: 0 for j in problem.jobs}
        # (earliest start, earliest end) that the job's previous operation imposes
        self.bounds = {j.key: (j.release, 0) for j in problem.jobs}
        self.gaps = {u: _gap(problem, u) for u in problem.units}
        self.previous = previous
        self.cache: dict[str, Slot] = {}

    def place_fixed(self) -> None:
        """Fixed operations first: they hold their unit whatever else happens (SCH-5)."""
        for job in self.jobs.values():
            for task in job.tasks:
                if task.fixed is None:
                    break
                unit, start, end = task.fixed
                if unit in self.timelines:
                    self.timelines[unit].add(start, end, task)
                self._record(job, task, unit, start, end)

    def run(self, key: Rule) -> None:
        """Place every other operation: among the jobs whose next operation could start
        before the earliest possible end, the one the rule ranks first (active schedule)."""
        jobs, position = self.jobs, self.position
        ready = {k for k, i in position.items() if i < len(jobs[k].tasks)}
        while ready:
            options = {k: self.best_slot(jobs[k], jobs[k].tasks[position[k]]) for k in ready}
            horizon_end = min(end for end, _, _ in options.values())
            contenders = [k for k, (_, start, _) in options.items() if start < horizon_end]
            chosen = min(
                contenders, key=lambda k: (key(jobs[k], jobs[k].tasks[position[k]], position[k]), k)
            )
            job = jobs[chosen]
            task = job.tasks[position[chosen]]
            end, start, unit = options[chosen]
            self.timelines[unit].add(start, end, task)
            self._record(job, task, unit, start, end)
            if position[chosen] == len(job.tasks):
                ready.discard(chosen)
            # The unit's timeline changed: slots computed on it may no longer be free.
            for other in ready:
                waiting = jobs[other].tasks[position[other]]
                if waiting.key in self.cache and unit in waiting.durations:
                    del self.cache[waiting.key]
            self.cache.pop(task.key, None)

    def _record(self, job: Job, task: Task, unit: str, start: int, end: int) -> None:
        self.placed.append(Assignment(task.key, job.key, task.seq, unit, start, end))
        self.bounds[job.key] = (start_after(task, start, end), end + task.lag_min)
        self.position[job.key] += 1

    def best_slot(self, job: Job, task: Task) -> Slot:
        """The earliest end of ``task`` on any of its units (a repair: see ``_kept``)."""
        hit = self.cache.get(task.key)
        if hit is not None:
            return hit
        est, min_end = self.bounds[job.key]
        found: Slot | None = None
        for unit, duration in task.durations.items():
            line = self.timelines.get(unit)
            if line is None:
                continue
            start = line.earliest(max(est, min_end - duration), duration, task, self.gaps[unit])
            option = (start + duration, start, unit)
            if found is None or option < found:
                found = option
        assert found is not None, f"{job.key}/{task.seq} has no unit (screened out before)"
        found = self._kept(task, est, min_end, found)
        self.cache[task.key] = found
        return found

    def _kept(self, task: Task, est: int, min_end: int, found: Slot) -> Slot:
        """A repair keeps an operation on its unit and at its time where that still works,
        and on its unit at all unless that costs more than its length."""
        before = self.previous.get(task.key)
        if before is None or before.unit not in task.durations:
            return found
        line = self.timelines.get(before.unit)
        if line is None:
            return found
        duration, gap = task.durations[before.unit], self.gaps[before.unit]
        earliest = max(est, min_end - duration)
        kept = line.earliest(max(earliest, before.start), duration, task, gap)
        if kept == before.start:
            return (kept + duration, kept, before.unit)
        start = line.earliest(earliest, duration, task, gap)
        if start + duration <= found[0] + duration:
            return (start + duration, start, before.unit)
        return found


def _gap(problem: Problem, unit: str) -> Callable[[Task, Task], int]:
    def gap(before: Task, after: Task) -> int:
        return problem.changeover(unit, before, after)

    return gap


def _rule(problem: Problem, rule: str) -> Rule:
    if rule == "mwkr":
        return lambda job, task, i: (-_remaining(job, i),)
    if rule == "spt":
        return lambda job, task, i: (min(task.durations.values()), -_remaining(job, i))
    if rule == "edd":
        return lambda job, task, i: (job.due if job.due is not None else 1 << 40, -job.weight)
    if rule == "slack":
        return lambda job, task, i: (
            ((job.due if job.due is not None else 1 << 40) - _remaining(job, i)) / job.weight,
        )
    if rule == "previous":
        previous = problem.previous
        return lambda job, task, i: (
            previous[task.key].start if task.key in previous else 1 << 40,
            -_remaining(job, i),
        )
    raise ValueError(f"unknown dispatching rule {rule!r}")
