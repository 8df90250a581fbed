"""Study files: TOML in, one frozen `Study` out, or one clear `StudyError`.

A study file is pure data. Every key is checked against what it may be before anything is
built or trained; the first problem found is reported with the file, the key (or line) and
what would be valid.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.data import DATASETS, DatasetInfo, dataset_info
from ablate.variants import AXES, VariantSpec, make_variant

TOP_LEVEL = ("name", "description", "dataset", "fixed", "grid", "variant")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.dataset]


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


def parse_study(text: str, path: str = "<study>") -> Study:
    """Parse and validate a study file's text; raises StudyError with a message for the user."""
    where = path
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{where}: TOML syntax error: {exc}") from None

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
    _expect(where, "dataset", dataset, str, "a string")
    try:
        dataset_info(dataset)
    except ValueError as exc:
        raise StudyError(f"{where}: {exc}") from None

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
    for i, table in enumerate(extra, start=1):
        _expect(where, f"variant #{i}", table, dict, "a table of axis = value")
        _check_axes(where, f"[[variant]] #{i}", table)

    variants = expand_variants(where, fixed, grid, extra)
    return Study(name=name, description=description, dataset=dataset, variants=variants, source=text, path=path)


def load_study(path: str | Path) -> Study:
    """Read and validate a study file."""
    p = Path(path)
    if not p.is_file():
        hint = " (it is a directory)" if p.is_dir() else ""
        raise StudyError(f"{p}: study file not found{hint}; give the path of a .toml study file, e.g. studies/quick.toml")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"{p}: cannot read the study file: {exc}") from None
    return parse_study(text, str(p))
