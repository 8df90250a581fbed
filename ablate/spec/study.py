"""Study files: TOML in, one frozen `Study` out, or one clear `StudyError`.

A study file is pure data. Every key is checked against what it may be before anything is
built or trained; the first problem found is reported with the file, the key (or line) and
what would be valid.
"""

from __future__ import annotations

import dataclasses
import json
import itertools
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.spec import limits
from ablate.spec.catalog import DATASETS, DatasetInfo, dataset_info
from ablate.spec.diagnostics import Diagnostics, DiagnosticsError, parse_diagnostics
from ablate.spec.owndata import OwnData, OwnDataError, scan_own_data
from ablate.spec.recipe import ALTERNATIVES, Recipe, make_recipe, recipe_dict
from ablate.spec.space import Sample, Space, SpaceError, parse_sample, parse_spaces
from ablate.spec.variants import AXES, VariantSpec, make_variant

TOP_LEVEL = ("name", "description", "dataset", "fixed", "grid", "variant", "train", "search", "seeds", "space", "sample", "diagnostics")
#: Recipe keys a [search] may tune, and how: the data and the budget (epochs) stay fixed so that
#: every variant and every trial is measured on the same footing.
SEARCHABLE = {
    "lr": "float", "momentum": "float", "weight_decay": "float", "label_smoothing": "float",
    "warmup_epochs": "float", "warmup_lr": "float", "gamma": "float",
    "batch_size": "int", "schedule": "choice", "nesterov": "choice",
}
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median")


@dataclass(frozen=True)
class SearchParam:
    """One tuned recipe key: a range (`low`..`high`, `log` scale) or a list of `choices`."""

    key: str
    kind: str  # "float" | "int" | "choice"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def describe(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Search:
    trials: int  # per variant: every variant gets the same budget
    space: tuple[SearchParam, ...]
    sampler: str = "tpe"
    pruner: str = "none"

    def describe(self) -> dict[str, Any]:
        return {"trials": self.trials, "space": {p.key: p.describe() for p in self.space},
                "sampler": self.sampler, "pruner": self.pruner}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


FIRST_SEED = 1  # seed 0 belongs to the search trials


def check_first_seed(value: Any) -> None:
    """[seeds] start, or `ablate run --first-seed`: a ValueError saying what is valid otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < FIRST_SEED:
        raise ValueError(f"expected an integer >= {FIRST_SEED} (the first final run's seed; 0 is the search trials'), "
                         f"got {limits.shown(value)}")
    if value > limits.MAX_FIRST_SEED:
        raise ValueError(f"{limits.shown(value)} is too large; use at most {limits.MAX_FIRST_SEED} ({limits.SEED_REASON})")


class StudyError(Exception):
    """A study file that cannot be used; the message says where and how to fix it."""


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    dataset: str
    variants: tuple[VariantSpec, ...]
    source: str  # the study file's text, stored with every run so it can be reproduced
    path: str
    recipe: Recipe = Recipe()
    search: Search | None = None
    seeds: int = 1  # final runs per variant (of its best searched recipe, when searched)
    #: per variant name, the recipe keys its [[variant]] table overrides (its `train = {...}`)
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    first_seed: int = 1  # the final runs use seeds first_seed .. first_seed + seeds - 1 (search trials: 0)
    #: an architecture search ([[space]] and [sample]): no variants, `sample.count` sampled per space
    spaces: tuple[Space, ...] = ()
    sample: Sample | None = None
    own_data: OwnData | None = None  # a [dataset] table's folder or .npz file; `dataset` is then its name
    #: the "why" measurements of every final run (ablate.spec.diagnostics); not part of `definition`
    diagnostics: Diagnostics = Diagnostics()

    @property
    def is_search(self) -> bool:
        """An architecture search: the networks are sampled from [[space]] tables, not listed."""
        return bool(self.spaces)

    @property
    def final_seeds(self) -> range:
        """The seeds of every variant's final runs: the same on every variant, so runs pair by seed."""
        return range(self.first_seed, self.first_seed + self.seeds)

    @property
    def info(self) -> DatasetInfo:
        return self.own_data.info if self.own_data is not None else DATASETS[self.dataset]

    @property
    def data(self) -> str | OwnData:
        """What `load_dataset` takes: a built-in dataset's name, or the own data."""
        return self.own_data if self.own_data is not None else self.dataset

    def recipe_for(self, spec: VariantSpec) -> Recipe:
        """The variant's recipe: the study's [train], with its own overrides applied."""
        table = self.overrides.get(spec.name)
        return self.recipe if not table else dataclasses.replace(self.recipe, **_normalised(self.recipe, table))


def merge_train(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A [train] table with a variant's overrides on top; an override given in the other unit
    (iterations for epochs, say) replaces the base's key of that pair."""
    merged = dict(base)
    for pair in ALTERNATIVES:
        for key in pair:
            if key in override:
                for other in pair:
                    merged.pop(other, None)
    merged.update(override)
    return merged


def _normalised(recipe: Recipe, override: dict[str, Any]) -> dict[str, Any]:
    """Override keys as `dataclasses.replace` takes them, the other key of each pair cleared."""
    out = dict(override)
    for first, second in ALTERNATIVES:
        if second in override and first not in override:
            out[first] = None if first == "epochs" else () if first == "milestones" else 0.0
        if first in override and second not in override:
            out[second] = None
    return out


#: Recipe keys that describe the data, loaded once for the whole study: no variant may override them.
STUDY_WIDE = ("train_subset", "val_size", "resize")


def _type_name(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def _expect(where: str, key: str, value: Any, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise StudyError(f"{where}: {key}: expected {what}, got {_type_name(value)} ({value!r})")


def _check_axes(where: str, section: str, table: dict[str, Any]) -> None:
    for key in table:
        if key not in AXES:
            raise StudyError(f"{where}: {section}.{key}: unknown axis; valid axes: {', '.join(AXES)}")


def _spec(where: str, context: str, axes: dict[str, Any]) -> VariantSpec:
    try:
        return make_variant(axes)
    except (ValueError, TypeError) as exc:
        raise StudyError(f"{where}: {context}: {exc}") from None


def _describe(point: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in point.items())


def expand_variants(where: str, fixed: dict[str, Any], grid: dict[str, list[Any]], extra: list[dict[str, Any]]) -> tuple[VariantSpec, ...]:
    """Every grid point (in file order, the last axis varying fastest) and then every extra
    variant, each over the fixed axes; points that describe the same network appear once."""
    points = math.prod(len(v) for v in grid.values()) if grid else 0
    if points + len(extra) > limits.MAX_VARIANTS:
        raise StudyError(
            f"{where}: [grid]: {points} grid points and {len(extra)} [[variant]] tables make {points + len(extra)} variants; "
            f"use at most {limits.MAX_VARIANTS} ({limits.VARIANTS_REASON})"
        )
    specs: list[VariantSpec] = []
    if grid:
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            specs.append(_spec(where, f"[grid] point ({_describe(point)})", {**fixed, **point}))
    for i, table in enumerate(extra, start=1):
        specs.append(_spec(where, f"[[variant]] #{i} ({_describe(table)})", {**fixed, **table}))
    if not grid and not extra:
        specs.append(_spec(where, "[fixed]", fixed))
    return tuple(dict.fromkeys(specs))  # dedupe, keeping the first occurrence's order


KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,%d}$" % limits.MAX_STRING)


def _check_shape(where: str, doc: dict[str, Any]) -> None:
    """Sizes before meanings: keys are names, strings and lists are short, nothing nests deeply.
    After this every message can quote the user's values and stays one short line."""
    stack: list[tuple[str, Any, int]] = [("", doc, 0)]
    while stack:
        at, value, depth = stack.pop()
        here = at or "the file"
        if depth > limits.MAX_NESTING:
            raise StudyError(f"{where}: {here}: nested {depth} deep; a study file nests tables and lists at most {limits.MAX_NESTING} deep")
        if isinstance(value, dict):
            for key, item in value.items():
                if not KEY_PATTERN.match(key):
                    raise StudyError(f"{where}: {here}: {key[:40]!r}{'...' if len(key) > 40 else ''} is not a valid key; "
                                     f"keys are letters, digits, '_' and '-' (at most {limits.MAX_STRING})")
                stack.append((f"{at}.{key}" if at else key, item, depth + 1))
        elif isinstance(value, list):
            if len(value) > limits.MAX_LIST:
                raise StudyError(f"{where}: {here}: a list of {len(value)} values; use at most {limits.MAX_LIST}")
            stack.extend((f"{at}[{i}]", item, depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str):
            longest = limits.MAX_DESCRIPTION if at == "description" else limits.MAX_STRING
            if len(value) > longest:
                raise StudyError(f"{where}: {here}: a string of {len(value)} characters; use at most {longest}")


def parse_study(text: str, path: str = "<study>") -> Study:
    """Parse and validate a study file's text; raises StudyError with a message for the user."""
    where = path
    doc = _read_toml(where, text)
    name, description, dataset, own = _header(where, doc)
    if "space" in doc or "sample" in doc:
        return _parse_space_study(where, doc, text, name, description, dataset, own)
    variants, fixed, grid, extra, trains = _variants(where, doc)
    info = own.info if own is not None else DATASETS[dataset]
    recipe, overrides, search = _recipe_and_search(where, doc, info, fixed, grid, extra, trains)
    seeds, first_seed = _seeds(where, doc, len(variants), search)
    return Study(
        name=name, description=description, dataset=dataset, variants=variants, source=text, path=path,
        recipe=recipe, search=search, seeds=seeds, first_seed=first_seed, overrides=overrides, own_data=own,
        diagnostics=_diagnostics(where, doc),
    )


def _diagnostics(where: str, doc: dict[str, Any]) -> Diagnostics:
    try:
        return parse_diagnostics(doc.get("diagnostics"))
    except DiagnosticsError as exc:
        raise StudyError(f"{where}: {exc}") from None


def _parse_space_study(where: str, doc: dict[str, Any], text: str, name: str, description: str, dataset: str,
                       own: OwnData | None) -> Study:
    """An architecture search: [[space]] and [sample] over [fixed] and [train] (ablate.spec.space)."""
    if "space" not in doc:
        raise StudyError(f"{where}: sample: [sample] needs at least one [[space]] table of axes to sample; add one or remove [sample]")
    for key, table in (("grid", "[grid]"), ("variant", "[[variant]]")):
        if key in doc:
            raise StudyError(f"{where}: {key}: {table} and [[space]] cannot be in one study (listed networks or sampled ones); "
                             "remove one, or make two studies")
    if "search" in doc:
        raise StudyError(f"{where}: search: [search] (recipe tuning) and [[space]] in one study are not supported; "
                         "remove [search]: every sampled architecture trains with [train]")
    fixed = doc.get("fixed", {})
    _expect(where, "fixed", fixed, dict, "a table [fixed] of axis = value")
    _check_axes(where, "fixed", fixed)
    if "sample" not in doc:
        raise StudyError(f"{where}: sample: missing; add [sample] with count = N (architectures to train per space)")
    try:
        spaces = parse_spaces(doc["space"], fixed)
        sample = parse_sample(doc["sample"], len(spaces))
    except SpaceError as exc:
        raise StudyError(f"{where}: {exc}") from None
    info = own.info if own is not None else DATASETS[dataset]
    recipe, _, _ = _recipe_and_search(where, {k: v for k, v in doc.items() if k != "search"}, info, fixed, {}, [], [])
    if recipe.val_size == 0:
        raise StudyError(f"{where}: train.val_size: a [[space]] search selects architectures on a validation split "
                         "(never on the test set); hold some training examples out, e.g. val_size = 5000")
    # [seeds]: the final runs of each finalist (the best `finalists`, or the Pareto set: at most every sample).
    seeds, first_seed = _seeds(where, doc, sample.count * len(spaces) if sample.multi else sample.finalists, None)
    return Study(name=name, description=description, dataset=dataset, variants=(), source=text, path=where,
                 recipe=recipe, spaces=spaces, sample=sample, own_data=own, seeds=seeds, first_seed=first_seed,
                 diagnostics=_diagnostics(where, doc))


def _read_toml(where: str, text: str) -> dict[str, Any]:
    if len(text) > limits.MAX_STUDY_BYTES:
        raise StudyError(f"{where}: the file has {len(text)} characters; a study file may have at most {limits.MAX_STUDY_BYTES} ({limits.MAX_STUDY_BYTES_REASON})")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{where}: TOML syntax error: {exc}") from None
    except RecursionError:
        raise StudyError(f"{where}: TOML: values nested too deeply to read; a study file nests tables and lists at most {limits.MAX_NESTING} deep") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise StudyError(f"{where}: TOML: a value cannot be read: {exc}") from None
    _check_shape(where, doc)

    return doc


def _header(where: str, doc: dict[str, Any]) -> tuple[str, str, str, OwnData | None]:
    """The top-level keys checked; the study's name, description, dataset name and own data."""
    for key in doc:
        if key not in TOP_LEVEL:
            raise StudyError(f"{where}: {key}: unknown key; valid top-level keys: {', '.join(TOP_LEVEL)}")

    if "name" not in doc:
        raise StudyError(f'{where}: name: missing; add e.g. name = "degradation-cifar10" at the top')
    name = doc["name"]
    _expect(where, "name", name, str, "a string")
    if not NAME_PATTERN.match(name):
        raise StudyError(
            f"{where}: name: {name!r} is not valid; use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, at most 100 characters)"
        )
    description = doc.get("description", "")
    _expect(where, "description", description, str, "a string")

    if "dataset" not in doc:
        raise StudyError(f"{where}: dataset: missing; add e.g. dataset = \"cifar10\" (one of {', '.join(DATASETS)})")
    dataset = doc["dataset"]
    if isinstance(dataset, dict):
        own = _own_data(where, dataset)
        return name, description, own.name, own
    _expect(where, "dataset", dataset, str, "a string, or a table [dataset] with path = \"your/folder\"")
    try:
        dataset_info(dataset)
    except ValueError as exc:
        raise StudyError(f"{where}: {exc}") from None

    return name, description, dataset, None


def _own_data(where: str, table: dict[str, Any]) -> OwnData:
    """A [dataset] table: the folder or .npz file it names, scanned (relative to the study file)."""
    study_dir = Path(where).parent if where != "<study>" else Path(".")
    try:
        own = scan_own_data(table, study_dir)
    except OwnDataError as exc:
        raise StudyError(f"{where}: {exc}") from None
    if own.name in DATASETS:
        raise StudyError(f"{where}: dataset.name: {own.name!r} is a built-in dataset's name; give your data another name, "
                         f"e.g. name = \"my-{own.name}\"")
    if not NAME_PATTERN.match(own.name):
        raise StudyError(f"{where}: dataset.name: {own.name!r} is not valid; use letters, digits, '.', '_' and '-' "
                         "(set name = \"...\" in [dataset] when the folder's name has others)")
    return own


def _variants(where: str, doc: dict[str, Any]) -> tuple[list[VariantSpec], dict[str, Any], dict[str, list[Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """[fixed], [grid] and [[variant]] checked and expanded; also the tables, for the overrides."""
    fixed = doc.get("fixed", {})
    _expect(where, "fixed", fixed, dict, "a table [fixed] of axis = value")
    _check_axes(where, "fixed", fixed)

    grid = doc.get("grid", {})
    _expect(where, "grid", grid, dict, "a table [grid] of axis = [values]")
    _check_axes(where, "grid", grid)
    for key, values in grid.items():
        _expect(where, f"grid.{key}", values, list, f"a list of values, e.g. {key} = [...]")
        if not values:
            raise StudyError(f"{where}: grid.{key}: empty list; give at least one value or remove the key")
        if key in fixed:
            raise StudyError(f"{where}: grid.{key}: also set in [fixed]; keep the axis in one of the two")

    extra = doc.get("variant", [])
    _expect(where, "variant", extra, list, "an array of tables [[variant]]")
    trains: list[dict[str, Any]] = []
    for i, table in enumerate(extra, start=1):
        _expect(where, f"variant #{i}", table, dict, "a table of axis = value")
        table = dict(table)
        own = table.pop("train", {})
        _expect(where, f"[[variant]] #{i}: train", own, dict, "a table of recipe keys, e.g. train = { warmup_iterations = 400 }")
        _check_axes(where, f"[[variant]] #{i}", table)
        extra[i - 1] = table
        trains.append(own)

    variants = expand_variants(where, fixed, grid, extra)
    blocks = sum(sum(v.blocks) for v in variants)
    if blocks > limits.MAX_STUDY_BLOCKS:
        raise StudyError(
            f"{where}: [grid]: the {len(variants)} variants have {blocks} blocks in all; use at most {limits.MAX_STUDY_BLOCKS} "
            f"({limits.STUDY_BLOCKS_REASON}): split the study or drop the deepest variants"
        )

    return variants, fixed, grid, extra, trains


def _recipe_and_search(where: str, doc: dict[str, Any], info: DatasetInfo, fixed: dict[str, Any], grid: dict[str, list[Any]],
                       extra: list[dict[str, Any]], trains: list[dict[str, Any]]) -> tuple[Recipe, dict[str, Any], Search | None]:
    """[train], the variants' own train tables and [search], checked against each other and the dataset."""
    train = doc.get("train", {})
    _expect(where, "train", train, dict, "a table [train] of recipe keys")
    try:
        recipe = make_recipe(train)
    except ValueError as exc:
        raise StudyError(f"{where}: train.{exc}") from None
    overrides = _overrides(where, fixed, grid, extra, trains, train)
    if recipe.train_subset is not None and recipe.train_subset + recipe.val_size > info.train_size:
        raise StudyError(
            f"{where}: train.train_subset: {limits.shown(recipe.train_subset)} examples (+ {recipe.val_size} for validation) is more "
            f"than {info.name}'s {info.train_size} training examples; lower it or leave it out"
        )
    if recipe.val_size >= info.train_size:
        raise StudyError(f"{where}: train.val_size: {limits.shown(recipe.val_size)} is not less than {info.name}'s {info.train_size} training examples")
    _check_batch_fits(f"{where}: train.batch_size", recipe.batch_size, recipe, info)
    search = _parse_search(where, doc.get("search"), recipe, info)
    if recipe.test_subset is not None and recipe.test_subset > info.test_size:
        raise StudyError(f"{where}: train.test_subset: {limits.shown(recipe.test_subset)} is more than {info.name}'s {info.test_size} test examples; lower it or leave it out")
    if search is not None and recipe.val_size == 0:
        raise StudyError(
            f"{where}: train.val_size: a [search] needs a validation split to steer on (the test set must never choose "
            f"hyperparameters); hold some training examples out, e.g. val_size = 5000 (as He et al. did), or remove [search]"
        )
    if search is not None:
        for name, table in overrides.items():
            for p in search.space:
                if p.key in table:
                    raise StudyError(f"{where}: [[variant]] {name}: train.{p.key}: also searched in [search]; "
                                     "a searched key cannot be fixed for one variant, remove one of the two")

    return recipe, overrides, search


def _seeds(where: str, doc: dict[str, Any], variants: int, search: Search | None) -> tuple[int, int]:
    """[seeds]: how many final runs per variant, and the first one's seed."""
    seeds_table = doc.get("seeds", {})
    _expect(where, "seeds", seeds_table, dict, "a table [seeds] with count = N")
    for key in seeds_table:
        if key not in ("count", "start"):
            raise StudyError(f"{where}: seeds.{key}: unknown key; [seeds] has count and start")
    seeds = seeds_table.get("count", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise StudyError(f"{where}: seeds.count: expected a positive integer (runs per variant), got {limits.shown(seeds)}")
    first_seed = seeds_table.get("start", FIRST_SEED)
    try:
        check_first_seed(first_seed)
    except ValueError as exc:
        raise StudyError(f"{where}: seeds.start: {exc}") from None
    if seeds > limits.MAX_SEEDS:
        raise StudyError(f"{where}: seeds.count: {limits.shown(seeds)} is too many; use at most {limits.MAX_SEEDS} ({limits.SEEDS_REASON})")
    units = variants * (seeds + (search.trials if search else 0))
    if units > limits.MAX_UNITS:
        raise StudyError(
            f"{where}: seeds.count: {variants} variants x ({seeds} seeds + {search.trials if search else 0} search trials) "
            f"make {units} trials; use at most {limits.MAX_UNITS} ({limits.UNITS_REASON})"
        )
    return seeds, first_seed


def _overrides(where: str, fixed: dict[str, Any], grid: dict[str, list[Any]], extra: list[dict[str, Any]],
               trains: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each [[variant]]'s own `train` table, checked as a whole recipe, by variant name."""
    grid_specs = set(expand_variants(where, fixed, grid, [])) if grid else set()
    out: dict[str, dict[str, Any]] = {}
    seen: dict[Any, dict[str, Any]] = {}
    for i, (table, own) in enumerate(zip(extra, trains), start=1):
        spec = _spec(where, f"[[variant]] #{i}", {**fixed, **table})
        at = f"{where}: [[variant]] #{i} ({spec.name}): train"
        for key in own:
            if key in STUDY_WIDE:
                raise StudyError(f"{at}.{key}: a data option, shared by the whole study (the data is loaded once); set it in [train]")
        if spec in seen and seen[spec] != own or (own and spec in grid_specs):
            raise StudyError(f"{at}: this network is also another variant of the study with a different recipe; "
                             "give each network one recipe (remove the duplicate or make the networks differ)")
        seen[spec] = own
        if not own:
            continue
        try:
            make_recipe(merge_train(base, own))
        except ValueError as exc:
            raise StudyError(f"{at}.{exc}") from None
        out[spec.name] = dict(own)
    return out


def _check_batch_fits(at: str, batch_size: Any, recipe: Recipe, info: DatasetInfo) -> None:
    """One batch must fit in the training examples a recipe leaves (train_subset is checked against
    the batch by the recipe itself)."""
    available = info.train_size - recipe.val_size if recipe.train_subset is None else recipe.train_subset
    if isinstance(batch_size, int) and batch_size > available:
        raise StudyError(f"{at}: {limits.shown(batch_size)} is more than the {available} training examples; use a smaller batch")


def _parse_search(where: str, table: Any, recipe: Recipe, info: DatasetInfo) -> Search | None:
    if table is None:
        return None
    _expect(where, "search", table, dict, "a table [search]")
    if "trials" not in table:
        raise StudyError(f"{where}: search.trials: missing; give the number of trials per variant, e.g. trials = 8")
    trials = table["trials"]
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise StudyError(f"{where}: search.trials: expected a positive integer (trials per variant), got {limits.shown(trials)}")
    if trials > limits.MAX_TRIALS:
        raise StudyError(f"{where}: search.trials: {limits.shown(trials)} is too many; use at most {limits.MAX_TRIALS} ({limits.TRIALS_REASON})")
    sampler = table.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise StudyError(f"{where}: search.sampler: {sampler!r} is not valid; use one of {', '.join(SAMPLERS)}")
    pruner = table.get("pruner", "none")
    if pruner not in PRUNERS:
        raise StudyError(f"{where}: search.pruner: {pruner!r} is not valid; use one of {', '.join(PRUNERS)}")
    space = []
    for key, spec in table.items():
        if key in ("trials", "sampler", "pruner"):
            continue
        if key not in SEARCHABLE:
            raise StudyError(
                f"{where}: search.{key}: not a searchable recipe key; search one of {', '.join(SEARCHABLE)} "
                "(or set trials, sampler, pruner)"
            )
        space.append(_search_param(where, key, spec, recipe, info))
    if not space:
        raise StudyError(f"{where}: search: nothing to search; add a range such as lr = {{ low = 0.01, high = 0.4, log = true }}")
    return Search(trials=trials, space=tuple(space), sampler=sampler, pruner=pruner)


def _search_param(where: str, key: str, spec: Any, recipe: Recipe, info: DatasetInfo) -> SearchParam:
    kind = SEARCHABLE[key]
    at = f"{where}: search.{key}"
    example = "{ choices = [...] }" if kind == "choice" else "{ low = ..., high = ..., log = true }"
    _expect(where, f"search.{key}", spec, dict, f"a table such as {key} = {example}")
    allowed = {"choices"} if kind == "choice" else {"low", "high", "log"}
    for k in spec:
        if k not in allowed:
            raise StudyError(f"{at}.{k}: unknown key; a {kind} range has {', '.join(sorted(allowed))}")
    if kind == "choice":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise StudyError(f"{at}.choices: expected a non-empty list of values")
        param = SearchParam(key, kind, choices=tuple(choices))
        values = choices
    else:
        if "low" not in spec or "high" not in spec:
            raise StudyError(f"{at}: give both low and high, e.g. {key} = {example}")
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        number = int if kind == "int" else (int, float)
        for k, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, number):
                raise StudyError(f"{at}.{k}: expected {'an integer' if kind == 'int' else 'a number'}, got {limits.shown(v)}")
        if not isinstance(log, bool):
            raise StudyError(f"{at}.log: expected true or false, got {log!r}")
        if not low < high:
            raise StudyError(f"{at}: low ({limits.shown(low)}) must be less than high ({limits.shown(high)})")
        if log and low <= 0:
            raise StudyError(f"{at}: a log-scale range needs low > 0, got {limits.shown(low)}")
        param = None  # made below, once both ends are within the recipe's bounds (float() overflows on a long integer)
        values = [low, high]
    for v in values:  # every end of the range must make a valid recipe
        try:
            dataclasses.replace(recipe, **{key: v})  # Recipe validates itself
        except (ValueError, TypeError) as exc:
            raise StudyError(f"{at}: {limits.shown(v)} would not be a valid recipe: {exc}") from None
        if key == "batch_size":
            _check_batch_fits(at, v, recipe, info)
    if param is None:
        number = float if kind == "float" else int
        param = SearchParam(key, kind, low=number(low), high=number(high), log=log)
    return param


def load_study(path: str | Path) -> Study:
    """Read and validate a study file."""
    p = Path(path)
    if not p.is_file():
        hint = " (it is a directory)" if p.is_dir() else ""
        raise StudyError(f"{p}: study file not found{hint}; give the path of a .toml study file, e.g. studies/quick.toml")
    try:
        with p.open("rb") as f:
            data = f.read(limits.MAX_STUDY_BYTES + 1)  # never more, whatever the file's size
        if len(data) > limits.MAX_STUDY_BYTES:
            raise StudyError(f"{p}: the file is larger than {limits.MAX_STUDY_BYTES} bytes, the most a study file may have ({limits.MAX_STUDY_BYTES_REASON})")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"{p}: cannot read the study file: {exc}") from None
    return parse_study(text, str(p))


# ---------------------------------------------------------------- the definition: what a unit means


def definition(study: Study) -> str:
    """Canonical JSON of everything that decides the results; a re-run must agree with it."""
    doc: dict[str, Any] = {
        "dataset": study.own_data.identity() if study.own_data is not None else study.dataset,
        "variants": [s.axes() for s in study.variants],
        "recipe": recipe_dict(study.recipe),
        "search": study.search.describe() if study.search else None,
        "seeds": study.seeds,
    }
    if study.first_seed != FIRST_SEED:  # only when moved: storages written before [seeds] start keep their definition
        doc["first_seed"] = study.first_seed
    if study.overrides:
        doc["overrides"] = study.overrides
    if study.is_search:
        assert study.sample is not None
        doc["spaces"] = [space.describe() for space in study.spaces]
        doc["sample"] = study.sample.describe()
    return json.dumps(doc, sort_keys=True)


def growth(stored: str, mine: str) -> tuple[str | None, bool]:
    """Whether a study file may run on a stored study: (why not, or None; whether it grows it).

    A study may grow: more variants, more seeds. Everything an existing unit means must stay:
    the dataset, the recipe, the search, the first seed, the existing variants and their own
    recipe overrides. A file that leaves out stored variants or seeds is refused too: it would
    run a part and report it as the whole."""
    old, new = json.loads(stored), json.loads(mine)
    if old == new:
        return None, False
    differs = [k for k in sorted(set(old) | set(new)) if k not in ("variants", "seeds", "overrides") and old.get(k) != new.get(k)]
    kept = [v for v in old.get("variants", []) if v in new.get("variants", [])]
    if len(kept) < len(old.get("variants", [])):
        differs.append("variants")
    if new.get("seeds", 0) < old.get("seeds", 0):
        differs.append("seeds")
    old_over, new_over = old.get("overrides") or {}, new.get("overrides") or {}
    names = {make_variant({k: tuple(x) if k == "blocks" else x for k, x in v.items()}).name for v in old.get("variants", [])}
    if any(old_over.get(n) != new_over.get(n) for n in names):
        differs.append("overrides")
    if differs:
        return f"it differs in: {', '.join(dict.fromkeys(differs))}", False
    return None, True
