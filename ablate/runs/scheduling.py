"""What to run next: a pure function of a study's units and its stored trials.

As Optuna keeps `_tell` apart from `Study`, this module knows nothing of storages, processes or
training: `plan(units, records)` reads trials as plain records (ablate.storage.TrialRecord) and
says which units are done, which may be claimed now (with what to resume or repeat), which
must be recorded as impossible, and which are running elsewhere. The driver acts on it; the
claim (ablate.storage.claim) asks it again under the database lock, so two workers never
claim one unit. Tested in milliseconds, without training (tests/test_scheduling.py).

Rules:
- a unit is *done* when its latest finished trial counts: COMPLETE, PRUNED, or FAIL for a reason
  of its own (ablate.outcomes). With `retry` (ablate run --retry-failed), a unit whose counting
  trial is the one named there is not done: it runs once more;
- a unit with a WAITING or RUNNING trial is *running* (here or elsewhere): never claimed twice;
- a variant's final runs wait until all of its search trials are done (search, then final);
  when none of them completed, its final runs are *impossible* (no recipe to repeat);
- a unit whose last attempt failed for a reason not its own (killed, interrupted) is *ready*
  again, with that attempt's params, so its checkpoint resumes;
- an architecture search's sample that was never trained (infeasible: over the budget; or a
  duplicate of an architecture sampled before) does not count: its unit is *ready* again, and
  the sampler draws another architecture;
- an architecture search's final runs exist once every sample is done: the finalists (the best
  `[sample] finalists` by validation error, or the Pareto set of validation error and cost) are
  read from the stored samples, so every worker derives the same ones, and each finalist's final
  runs are units keyed by its name, as a grid variant's are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ablate.storage import TrialRecord
from ablate.storage.outcomes import selection_error
from ablate.spec.space import pareto_front
from ablate.spec.study import FIRST_SEED, Study
from ablate.spec.variants import VariantSpec, make_variant

COUNTING = ("COMPLETE", "PRUNED")
IN_FLIGHT = ("WAITING", "RUNNING")


@dataclass(frozen=True)
class Unit:
    """One trial's worth of work: a variant's search trial or one of its final seeded runs; or,
    in an architecture search, one sampled architecture of a space (`variant` None until sampled)."""

    variant: VariantSpec | None
    kind: str  # "search" | "final" | "sample"
    index: int
    first_seed: int = FIRST_SEED  # [seeds] start: the seed of final run 0
    space: str | None = None  # a sample's [[space]] name
    finalist: bool = False  # a final run of an architecture search's finalist

    @property
    def seed(self) -> int:
        # Search trials share seed 0, so hyperparameters are compared on one initialisation; final
        # runs use fresh seeds (1..count unless [seeds] start moves them), so a variant's reported
        # error is not the best of its search.
        return 0 if self.kind in ("search", "sample") else self.first_seed + self.index

    @property
    def key(self) -> str:
        if self.space is not None:  # the same before and after its architecture is sampled
            return f"{self.space}/{self.kind}/{self.index}"
        assert self.variant is not None
        return f"{self.variant.name}/{self.kind}/{self.index}"


def study_units(study: Study, records: Sequence[TrialRecord] = ()) -> list[Unit]:
    """Every unit, variant by variant: its search trials, then its final runs. An architecture
    search: `[sample] count` samples per space, then, once the `records` hold every sample, the
    finalists' final runs."""
    if study.is_search:
        assert study.sample is not None
        samples = [Unit(None, "sample", i, space=space.name) for space in study.spaces for i in range(study.sample.count)]
        done = unit_state(records).done if records else {}
        if not all(u.key in done for u in samples):
            return samples
        return samples + [Unit(spec, "final", i, study.first_seed, finalist=True)
                          for spec in finalists(study, [done[u.key] for u in samples]) for i in range(study.seeds)]
    units = []
    for spec in study.variants:
        if study.search is not None:
            units += [Unit(spec, "search", i) for i in range(study.search.trials)]
        units += [Unit(spec, "final", i, study.first_seed) for i in range(study.seeds)]
    return units


@dataclass(frozen=True)
class UnitState:
    done: dict[str, TrialRecord]  # unit key -> its latest counting trial
    in_flight: set[str]  # units with a WAITING or RUNNING trial (and none counting)
    interrupted: dict[str, TrialRecord]  # units whose last attempt failed for a reason not their own


def unit_state(records: Sequence[TrialRecord]) -> UnitState:
    from ablate.storage import outcomes

    done: dict[str, TrialRecord] = {}
    in_flight: set[str] = set()
    interrupted: dict[str, TrialRecord] = {}
    for r in records:  # in trial order: a unit retried with --retry-failed is done by its latest attempt
        if r.unit is None or r.failure_kind in outcomes.NOT_TRAINED or r.duplicate_of is not None:  # another sample is drawn
            continue
        if r.state in COUNTING or (r.state == "FAIL" and outcomes.is_own(r.failure_kind)):
            done[r.unit] = r
        elif r.state in IN_FLIGHT:
            in_flight.add(r.unit)
        elif r.state == "FAIL":
            interrupted[r.unit] = r
    return UnitState(done, in_flight - set(done), {k: t for k, t in interrupted.items() if k not in done})


def finalists(study: Study, done: Sequence[TrialRecord]) -> list[VariantSpec]:
    """The architectures a search's final runs repeat, from its done samples (COMPLETE ones: a
    pruned sample's error is not a full run's): one objective, the best `[sample] finalists` by
    validation error (ties to the earlier sample); two, the Pareto set of validation error and
    cost, cheapest first."""
    assert study.sample is not None
    complete = sorted((r for r in done if r.state == "COMPLETE" and r.spec is not None and r.val_error is not None
                       and r.duplicate_of is None and (study.sample.cost is None or study.sample.cost in r.costs)),
                      key=lambda r: r.number)
    if study.sample.cost is None:
        chosen = sorted(complete, key=lambda r: (r.val_error, r.number))[: study.sample.finalists]
    else:
        cost = study.sample.cost
        front = pareto_front([(r.val_error, r.costs[cost]) for r in complete])
        chosen = sorted((r for r, on in zip(complete, front) if on), key=lambda r: (r.costs[cost], r.val_error, r.number))
    return [make_variant(dict(r.spec)) for r in chosen if r.spec is not None]


def failed_units(records: Sequence[TrialRecord]) -> dict[str, TrialRecord]:
    """Units whose counting trial failed for a reason of their own: unit key -> that trial."""
    return {k: r for k, r in unit_state(records).done.items() if r.state == "FAIL"}


def best_search(records: Sequence[TrialRecord], variant: str) -> TrialRecord | None:
    """The variant's search trial whose values its final runs repeat: the lowest validation error
    (the trial's value where there is none); ties go to the earlier trial."""
    complete = [r for r in records if r.state == "COMPLETE" and r.unit is not None and r.unit.startswith(f"{variant}/search/")]
    if not complete:
        return None
    return min(complete, key=lambda r: (selection_error(r.val_error, r.value if r.value is not None else float("inf")), r.number))


@dataclass(frozen=True)
class Ready:
    """A unit that may be claimed now: `previous`, its interrupted attempt (resume with its
    params); `best`, for a final run of a searched study, the search trial whose values it repeats."""

    unit: Unit
    previous: TrialRecord | None = None
    best: TrialRecord | None = None


@dataclass(frozen=True)
class Plan:
    done: dict[str, TrialRecord]  # unit key -> its counting trial
    ready: list[Ready]  # in study order
    impossible: list[Unit]  # final runs of a variant none of whose search trials completed
    running: list[str]  # units in flight (here or on other workers)
    blocked: list[str]  # final runs waiting for their variant's search

    @property
    def claimable(self) -> set[str]:
        return {r.unit.key for r in self.ready} | {u.key for u in self.impossible}

    @property
    def finished(self) -> bool:
        return not (self.ready or self.impossible or self.running)


def plan(units: Sequence[Unit], records: Sequence[TrialRecord], retry: Mapping[str, int] | None = None) -> Plan:
    """What to do next (module docstring). `retry`: unit key -> the number of its failed trial
    to run once more (ablate run --retry-failed)."""
    retry = retry or {}
    state = unit_state(records)
    done = {k: r for k, r in state.done.items() if retry.get(k) != r.number}
    ready: list[Ready] = []
    impossible: list[Unit] = []
    blocked: list[str] = []
    has_search = {u.variant for u in units if u.kind == "search"}
    for u in units:
        if u.key in done or u.key in state.in_flight:
            continue
        if u.kind == "final" and u.variant in has_search:
            search = [s for s in units if s.variant == u.variant and s.kind == "search"]
            if not all(s.key in done for s in search):
                blocked.append(u.key)
                continue
            best = best_search(records, u.variant.name)
            previous = state.interrupted.get(u.key)
            if best is None and previous is None:
                impossible.append(u)
                continue
            ready.append(Ready(u, previous, best))
            continue
        ready.append(Ready(u, state.interrupted.get(u.key)))
    running = [u.key for u in units if u.key in state.in_flight and u.key not in done]
    return Plan(done, ready, impossible, running, blocked)
