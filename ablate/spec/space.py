"""Design spaces: `[[space]]` tables (axes sampled instead of crossed) and the `[sample]` table.

A study with `[[space]]` is an architecture search: each sampled architecture is one trial,
trained with the study's `[train]` recipe, selected on the validation split. This module only
reads and checks the tables; sampling and training are `ablate.runs`'s.

    [[space]]
    name = "resnets"                           # optional while there is one space
    connection = ["plain", "residual"]         # a list: one of these values
    depth = [8, 14, 20]                        # each valid for every block the space allows
    width = { low = 4, high = 32, log = true } # a range; integers for integer axes
    [sample]
    count = 24                                 # architectures trained per space (infeasible ones do not count)
    sampler = "tpe"                            # random | tpe | nsga2 | qmc (random by default with several spaces)
    objectives = ["val_error", "macs"]         # an error, optionally macs or params
    max_macs = 30e6                            # an architecture over it is never trained
    max_params = 1e6
    pruner = "hyperband"                       # none | median | hyperband | asha (single objective only)
    finalists = 3                              # one objective: the best N get [seeds] final runs
                                               # (two objectives: the Pareto set does)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

from ablate.spec import limits
from ablate.spec.variants import AXES, VariantSpec, make_variant

__all__ = ["SpaceAxis", "Space", "Sample", "SpaceError", "parse_spaces", "parse_sample", "pareto_front",
           "SAMPLE_SAMPLERS", "UNBIASED_SAMPLERS", "SAMPLE_PRUNERS", "SECOND_OBJECTIVES", "DEFAULT_FINALISTS"]

SAMPLE_SAMPLERS = ("random", "tpe", "nsga2", "qmc")
#: Samplers that draw without regard to the errors seen: what comparing spaces by their error
#: distributions needs (Radosavovic et al. 2019 sample each space at random).
UNBIASED_SAMPLERS = ("random", "qmc")
SAMPLE_PRUNERS = ("none", "median", "hyperband", "asha")
SECOND_OBJECTIVES = ("macs", "params")
SAMPLE_KEYS = ("count", "sampler", "objectives", "max_macs", "max_params", "pruner", "seed", "finalists")
DEFAULT_FINALISTS = 3
#: Axes a space may sample: `blocks` (per-stage counts) is not one; sample `depth` instead.
SPACE_AXES = tuple(a for a in AXES if a != "blocks")
#: Axes a range may give: depth is a list, since most integers are not valid depths (6n+2, 9n+2).
INTEGER_AXES = ("width",)
DEFAULT_SPACE = "space"
#: Axes along which parameters and MACs only grow, all else equal.
MONOTONE_AXES = ("depth", "width")


class SpaceError(ValueError):
    """A [[space]] or [sample] table that cannot be used: the message names the key and the fix."""


@dataclass(frozen=True)
class SpaceAxis:
    """One sampled axis: a list of `choices`, or an integer range `low`..`high` (`log` scale)."""

    key: str
    choices: tuple[Any, ...] = ()
    low: int | None = None
    high: int | None = None
    log: bool = False

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def describe(self) -> Any:
        return {"low": self.low, "high": self.high, "log": self.log} if self.is_range else list(self.choices)

    def cheapest(self) -> tuple[Any, ...]:
        """The values the smallest architecture may take on this axis: a range's low end, the
        least of a list of depths (every listed depth is valid with every block the space
        allows, and cost grows with depth and width), or every choice of a categorical axis."""
        if self.is_range:
            return (self.low,)
        return (min(self.choices),) if self.key in MONOTONE_AXES else self.choices

    def priciest(self) -> tuple[Any, ...]:
        """The values the largest architecture may take on this axis: a range's high end, the
        greatest of a list of depths, or every choice of a categorical axis."""
        if self.is_range:
            return (self.high,)
        return (max(self.choices),) if self.key in MONOTONE_AXES else self.choices


@dataclass(frozen=True)
class Space:
    """A design space: its sampled axes over the study's [fixed] axes."""

    name: str
    axes: tuple[SpaceAxis, ...]
    fixed: tuple[tuple[str, Any], ...] = ()

    def spec(self, values: dict[str, Any]) -> VariantSpec:
        """The architecture of sampled `values`; ValueError when the combination is not a valid net."""
        return make_variant({**dict(self.fixed), **values})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "axes": {a.key: a.describe() for a in self.axes}, "fixed": dict(self.fixed)}

    def size(self, most: int = 100_000) -> int | None:
        """How many distinct valid architectures the space holds (None: more combinations than `most`
        to count)."""
        options = [a.choices or tuple(range(a.low, a.high + 1)) for a in self.axes]  # type: ignore[arg-type]
        if math.prod(len(o) for o in options) > most:
            return None
        names = set()
        for values in itertools.product(*options):
            try:
                names.add(self.spec(dict(zip((a.key for a in self.axes), values))).name)
            except ValueError:
                continue
        return len(names)

    def cheapest_candidates(self, most: int = 512) -> list[VariantSpec]:
        """Valid architectures at every range's low end and every choice (at most `most`; none
        if there would be more): the smallest one the space holds is among them."""
        return self._candidates([a.cheapest() for a in self.axes], most)

    def priciest_candidates(self, most: int = 512) -> list[VariantSpec]:
        """As `cheapest_candidates`, at every range's high end: the largest one is among them."""
        return self._candidates([a.priciest() for a in self.axes], most)

    def _candidates(self, options: list[tuple[Any, ...]], most: int) -> list[VariantSpec]:
        if math.prod(len(o) for o in options) > most:
            return []
        out = []
        for values in itertools.product(*options):
            try:
                out.append(self.spec(dict(zip((a.key for a in self.axes), values))))
            except ValueError:
                continue
        return out


@dataclass(frozen=True)
class Sample:
    """How the spaces are sampled: `count` trained architectures per space, under a budget."""

    count: int
    sampler: str = "tpe"
    objectives: tuple[str, ...] = ("val_error",)
    max_macs: float | None = None
    max_params: float | None = None
    pruner: str = "none"
    seed: int = 0
    finalists: int = DEFAULT_FINALISTS  # one objective: the best N get final runs (two: the Pareto set)

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def cost(self) -> str | None:
        """The second objective (macs or params), or None for a single-objective search."""
        return self.objectives[1] if self.multi else None

    def over_budget(self, params: int, macs: int) -> str | None:
        """Why an architecture of `params` and `macs` may not be trained, or None."""
        if self.max_macs is not None and macs > self.max_macs:
            return f"{macs} MACs is over the budget max_macs = {self.max_macs:g}"
        if self.max_params is not None and params > self.max_params:
            return f"{params} parameters is over the budget max_params = {self.max_params:g}"
        return None

    def describe(self) -> dict[str, Any]:
        return {"count": self.count, "sampler": self.sampler, "objectives": list(self.objectives),
                "max_macs": self.max_macs, "max_params": self.max_params, "pruner": self.pruner, "seed": self.seed,
                "finalists": None if self.multi else self.finalists}


def _type(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__)


def parse_spaces(tables: Any, fixed: dict[str, Any]) -> tuple[Space, ...]:
    """[[space]] tables checked: each axis a list of values or an integer range, every listed
    value valid for every other value the space allows."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables) or not tables:
        raise SpaceError(f"space: expected one or more [[space]] tables, got {_type(tables)}; write [[space]] (two brackets)")
    names: set[str] = set()
    spaces = []
    for i, table in enumerate(tables, start=1):
        at = "space" if len(tables) == 1 else f"[[space]] #{i}"
        name = table.get("name", DEFAULT_SPACE if len(tables) == 1 else None)
        if name is None:
            raise SpaceError(f"{at}.name: missing; with {len(tables)} spaces each needs a name, e.g. name = \"resnets\"")
        if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise SpaceError(f"{at}.name: {name!r} is not valid; use letters, digits, '-' and '_'")
        if name in names:
            raise SpaceError(f"{at}.name: {name!r} names two spaces; give each space its own name")
        names.add(name)
        axes = tuple(_axis(f"{at}.{key}", key, value, fixed) for key, value in table.items() if key != "name")
        if not axes:
            raise SpaceError(f"{at}: no axis to sample; add e.g. depth = [8, 14, 20] or width = {{ low = 4, high = 32 }}")
        space = Space(name, axes, tuple(sorted((k, v) for k, v in fixed.items() if k not in {a.key for a in axes})))
        _check_values(at, space)
        spaces.append(space)
    return tuple(spaces)


def _axis(at: str, key: str, value: Any, fixed: dict[str, Any]) -> SpaceAxis:
    if key not in SPACE_AXES:
        hint = "; sample depth instead of blocks" if key == "blocks" else ""
        raise SpaceError(f"{at}: unknown axis; a space samples {', '.join(SPACE_AXES)}{hint}")
    if key in fixed:
        raise SpaceError(f"{at}: also set in [fixed]; keep the axis in one of the two")
    if isinstance(value, list):
        if not value:
            raise SpaceError(f"{at}: empty list; give at least one value or remove the key")
        if len(set(map(repr, value))) != len(value):
            raise SpaceError(f"{at}: a value is listed twice; list each value once")
        return SpaceAxis(key, choices=tuple(value))
    if isinstance(value, dict):
        return _range(at, key, value)
    raise SpaceError(f"{at}: expected a list of values or a range {{ low = ..., high = ... }}, got {_type(value)} ({value!r})")


def _range(at: str, key: str, table: dict[str, Any]) -> SpaceAxis:
    if key not in INTEGER_AXES:
        hint = " (most integers are not valid depths: 6n+2 or 9n+2), e.g. depth = [8, 14, 20]" if key == "depth" else ""
        raise SpaceError(f"{at}: a range is only for {', '.join(INTEGER_AXES)}; give a list of values{hint}")
    for k in table:
        if k not in ("low", "high", "log"):
            raise SpaceError(f"{at}.{k}: unknown key; a range has low, high and log")
    if "low" not in table or "high" not in table:
        raise SpaceError(f"{at}: give both low and high, e.g. {key} = {{ low = 4, high = 32, log = true }}")
    low, high, log = table["low"], table["high"], table.get("log", False)
    for k, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpaceError(f"{at}.{k}: expected a positive integer ({key} is an integer axis), got {limits.shown(v)}")
    if not isinstance(log, bool):
        raise SpaceError(f"{at}.log: expected true or false, got {log!r}")
    if not low < high:
        raise SpaceError(f"{at}: low ({limits.shown(low)}) must be less than high ({limits.shown(high)}); "
                         f"for one value write {key} = [{limits.shown(low)}]")
    return SpaceAxis(key, low=low, high=high, log=log)


def _check_values(at: str, space: Space) -> None:
    """Every listed value (and each end of a range) makes a valid net with every value of the
    axes that decide validity (block, stem, connection), the other axes at their first value."""
    deciding = [a for a in space.axes if a.key in ("block", "stem", "connection")]
    for axis in sorted(space.axes, key=lambda a: a in deciding):  # a depth is named before the block it does not fit
        others = [a for a in deciding if a.key != axis.key]
        base = {a.key: a.cheapest()[0] for a in space.axes if a.key != axis.key and a not in others}
        values = axis.choices or (axis.low, axis.high)
        for value, combo in itertools.product(values, itertools.product(*(a.choices for a in others))):
            point = {**base, **dict(zip((a.key for a in others), combo)), axis.key: value}
            try:
                space.spec(point)
            except ValueError as exc:
                shown = ", ".join(f"{k} = {v!r}" for k, v in point.items() if k != axis.key)
                raise SpaceError(f"{at}.{axis.key}: {value!r} is not valid with {shown or 'the [fixed] axes'}: {exc}") from None


def parse_sample(table: Any, spaces: int) -> Sample:
    """[sample] checked: count, sampler, objectives, the budget, the pruner (single objective only)."""
    if not isinstance(table, dict):
        raise SpaceError(f"sample: expected a table [sample] with count = N, got {_type(table)}")
    for key in table:
        if key not in SAMPLE_KEYS:
            raise SpaceError(f"sample.{key}: unknown key; [sample] has {', '.join(SAMPLE_KEYS)}")
    if "count" not in table:
        raise SpaceError("sample.count: missing; give the number of architectures to train per space, e.g. count = 24")
    count = table["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SpaceError(f"sample.count: expected a positive integer (architectures trained per space), got {limits.shown(count)}")
    if count * spaces > limits.MAX_SAMPLES:
        raise SpaceError(f"sample.count: {limits.shown(count)} x {spaces} spaces is too many; "
                         f"use at most {limits.MAX_SAMPLES} in all ({limits.SAMPLES_REASON})")
    sampler = table.get("sampler", "tpe" if spaces == 1 else "random")
    if sampler not in SAMPLE_SAMPLERS:
        raise SpaceError(f"sample.sampler: {sampler!r} is not valid; use one of {', '.join(SAMPLE_SAMPLERS)}")
    if spaces > 1 and sampler not in UNBIASED_SAMPLERS:
        raise SpaceError(f"sample.sampler: {sampler!r} cannot compare {spaces} spaces: it favours the good regions of each "
                         "space, so their error distributions would not be those of random models; use \"random\" or \"qmc\"")
    objectives = _objectives(table.get("objectives", ["val_error"]))
    pruner = table.get("pruner", "none")
    if pruner not in SAMPLE_PRUNERS:
        raise SpaceError(f"sample.pruner: {pruner!r} is not valid; use one of {', '.join(SAMPLE_PRUNERS)}")
    if pruner != "none" and len(objectives) > 1:
        raise SpaceError(f"sample.pruner: {pruner!r} cannot prune a multi-objective search (Optuna's pruners compare one "
                         "value per epoch); set pruner = \"none\" or objectives = [\"val_error\"]")
    if pruner != "none" and (spaces > 1 or sampler == "qmc"):
        why = ("a pruned model's error is of a shorter training, so the spaces' error distributions would not be those of "
               "fully trained random models" if spaces > 1 else
               "qmc counts its points over the study's trials, which Optuna's Hyperband splits into brackets")
        used = f"{spaces} spaces" if spaces > 1 else 'sampler = "qmc"'
        raise SpaceError(f"sample.pruner: {pruner!r} cannot be used with {used}: {why}; set pruner = \"none\"")
    budget = {k: _budget(k, table.get(k)) for k in ("max_macs", "max_params")}
    seed = table.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= limits.MAX_SEED:
        raise SpaceError(f"sample.seed: expected an integer from 0 to {limits.MAX_SEED} (the sampler's seed), got {limits.shown(seed)}")
    finalists = table.get("finalists", min(DEFAULT_FINALISTS, count * spaces))
    if "finalists" in table and len(objectives) > 1:
        raise SpaceError("sample.finalists: a multi-objective search gives its Pareto set final runs, not the best N; "
                         "remove finalists, or set objectives = [\"val_error\"]")
    if isinstance(finalists, bool) or not isinstance(finalists, int) or not 1 <= finalists <= count * spaces:
        raise SpaceError(f"sample.finalists: expected an integer from 1 to {count * spaces} (count x spaces: the best N "
                         f"sampled architectures get [seeds] final runs), got {limits.shown(finalists)}")
    return Sample(count=count, sampler=sampler, objectives=objectives, pruner=pruner, seed=seed, finalists=finalists, **budget)


def pareto_front(points: Sequence[Sequence[float]]) -> list[bool]:
    """Which points no other point dominates (no worse in every objective, better in one; all
    minimised). The one definition of the front: for the final runs and the report alike."""
    def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
        return all(a <= b for a, b in zip(p, q)) and any(a < b for a, b in zip(p, q))

    return [not any(dominates(q, p) for q in points) for p in points]


def _objectives(value: Any) -> tuple[str, ...]:
    fix = 'use ["val_error"] or ["val_error", "macs"] (or "params")'
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SpaceError(f"sample.objectives: expected a list of names, got {value!r}; {fix}")
    if value[0] != "val_error":
        raise SpaceError(f"sample.objectives: the first objective must be \"val_error\" (selection never looks at the test set); {fix}")
    if len(value) > 2 or (len(value) == 2 and value[1] not in SECOND_OBJECTIVES):
        raise SpaceError(f"sample.objectives: {value!r} is not valid; {fix}")
    return tuple(value)


def _budget(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SpaceError(f"sample.{key}: expected a positive number (e.g. {key} = 30e6), got {limits.shown(value)}")
    return float(value)
