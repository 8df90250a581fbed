"""The storage contract: what ablate keeps in an Optuna RDB storage, and how. docs/storage.md
says it in words; this module is the only code that knows the key names and encodings.

    trial params      spec_params(spec) / spec_from_params(params), axis_values(...), flat(value)
    trial attributes  TrialAttrs (read, to_user_attrs), set_trial_attrs(trial, **fields), Worker
    study attributes  StudyAttrs (read, to_user_attrs, write)
    defaults          DEFAULT_STORAGE, SQLITE_BUSY_SECONDS, STORAGE_RETRY_SECONDS

Elsewhere in `ablate.storage`: how a trial ended and trials as plain records (`outcomes`:
records(trials), failure_kind); opening a storage, claiming a unit exactly once and heartbeats
(`rdb`: open_storage, claim, heartbeats, safe_url, sqlite_path); outages (`retry`). What a
unit means, and whether a study may grow, is the study's own (ablate.spec.study: definition,
growth).

The runner writes through it; the analysis, the report, the CLI and the test fixtures read (and
write) through it, so none of them can drift from the others. Adding an axis is a change to
`ablate.spec.variants.AXES` alone; renaming a key is a change to a field's `key` here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ablate.spec.recipe import recipe_dict
from ablate.spec.variants import AXES, VariantSpec, make_variant

__all__ = ['StorageError', 'trial_key', 'spec_params', 'spec_from_params', 'axis_values', 'flat', 'Worker', 'TrialAttrs', 'encode_trial_attrs', 'set_trial_attrs', 'unit_attrs', 'StudyAttrs', 'number', 'DEFAULT_STORAGE', 'SQLITE_BUSY_SECONDS', 'STORAGE_RETRY_SECONDS', 'recipe_dict']

if TYPE_CHECKING:
    import optuna


DEFAULT_STORAGE = "sqlite:///ablate.db"
SQLITE_BUSY_SECONDS = 60  # how long a worker waits for SQLite's write lock before giving up
#: How long a worker retries a storage that went away (a restart, a failover, a lock held past the
#: busy timeout) before it stops (ablate.storage.retry; `ablate run --storage-retry`).
STORAGE_RETRY_SECONDS = 120


class StorageError(Exception):
    """A storage that cannot be opened or a stored study that does not fit; the message says how to fix it."""


def _key(name: str) -> Any:
    """A dataclass field stored under `name` (the default is the field's own name)."""
    return field(default=None, metadata={"key": name})


def _keys(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("key", f.name) for f in dataclasses.fields(cls)}


def trial_key(name: str) -> str:
    """The stored key of a TrialAttrs field."""
    return _keys(TrialAttrs)[name]


# ---------------------------------------------------------------- trial params


def _encode_axis(value: Any) -> Any:
    if value is None:  # a plain net's shortcut
        return "none"
    if isinstance(value, (tuple, list)):  # blocks per stage
        return "-".join(map(str, value))
    return value


def spec_params(spec: VariantSpec) -> dict[str, Any]:
    """A variant's axes as Optuna params: `shortcut` "none" for a plain net, `blocks` "3-3-3"."""
    return {a: _encode_axis(getattr(spec, a)) for a in AXES}


def spec_from_params(params: Mapping[str, Any]) -> VariantSpec:
    """The variant a trial's params (or a stored `variants` entry) describe; ValueError if none."""
    axes: dict[str, Any] = {a: params[a] for a in AXES if a in params}
    if axes.get("shortcut") in ("none", "", "-"):
        axes["shortcut"] = None
    if isinstance(axes.get("blocks"), str):
        axes["blocks"] = [int(b) for b in axes["blocks"].split("-")]
    for a in ("depth", "width"):
        if isinstance(axes.get(a), float) and axes[a].is_integer():
            axes[a] = int(axes[a])
    return make_variant(axes)


def axis_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The axes of trial params or of a stored `variants` entry, in the params' encoding (as
    tables show them): a plain net's shortcut "none", blocks "3-3-3", integers as int."""
    out = {a: values.get(a) for a in AXES}
    out["shortcut"] = "none" if out["shortcut"] in (None, "", "-") else out["shortcut"]
    out["blocks"] = None if out["blocks"] is None else _encode_axis(out["blocks"])
    for a, v in out.items():
        if isinstance(v, float) and v.is_integer():
            out[a] = int(v)
        elif isinstance(v, str) and v.isdigit() and a not in ("blocks",):
            out[a] = int(v)
    return out


def flat(value: Any) -> Any:
    """A recipe value as one plain value: a trial param, a table cell. Tuples and lists join with
    "+" ("crop+flip", "0.5+0.75"; empty: "none"), dicts as "k=v, ..."."""
    if isinstance(value, (tuple, list)):
        return "+".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={value[k]}" for k in value)
    return value




# ---------------------------------------------------------------- trial user attributes


@dataclass(frozen=True)
class Worker:
    """Who runs a trial: the machine, the process and the device it trains on."""

    host: str
    pid: int
    device: str

    @classmethod
    def here(cls, device: str) -> "Worker":
        return cls(socket.gethostname(), os.getpid(), device)

    def to_attr(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "device": self.device}

    @classmethod
    def read(cls, value: Any) -> "Worker | None":
        if not isinstance(value, dict):
            return None
        try:
            return cls(str(value.get("host", "?")), int(value.get("pid") or 0), str(value.get("device", "?")))
        except (TypeError, ValueError):  # written by something else
            return None

    def __str__(self) -> str:
        return f"{self.host}:{self.pid} {self.device}"


@dataclass(frozen=True)
class TrialAttrs:
    """A trial's user attributes (docs/storage.md, "Trial user attributes"). Every field is
    optional: a trial fills them as it goes (the unit's at its claim, the run's as it starts,
    the results as it ends), and a reader takes what is there."""

    # the unit: written when it is claimed
    unit: str | None = _key("unit")  # "<variant>/<kind>/<index>"
    variant: str | None = _key("variant")
    kind: str | None = _key("kind")  # "search" | "final" | "sample"
    # an architecture search's sample: its [[space]], and the sampled network's axes (all of them)
    space: str | None = _key("space")
    spec: dict[str, Any] | None = _key("spec")
    index: int | None = _key("index")
    seed: int | None = _key("seed")
    worker: Worker | None = _key("worker")
    # the run: written when training starts
    recipe: dict[str, Any] | None = _key("recipe")
    device: str | None = _key("device")
    versions: dict[str, str] | None = _key("versions")
    data: str | None = _key("data")
    history: list[dict[str, Any]] | None = _key("history")  # one record per epoch, live
    # the results
    params: int | None = _key("params")
    macs: int | None = _key("macs")
    train_error: float | None = _key("train_error")
    test_error: float | None = _key("test_error")
    val_error: float | None = _key("val_error")
    images_per_second: float | None = _key("images_per_second")
    seconds: float | None = _key("seconds")
    resumed_from: int | None = _key("resumed_from")
    # a sample whose architecture was trained before: not trained again; the number of the trial
    # that trained it, whose values this trial gave the sampler (ablate.runs.runner)
    duplicate_of: int | None = _key("duplicate_of")
    #: a final run's "why" measurements (ablate.engine.diagnostics): {"settings", "init", "lesion", "landscape", "error"}
    diagnostics: dict[str, Any] | None = _key("diagnostics")
    # how it ended, when not well (ablate.outcomes)
    failure: str | None = _key("failure")
    failure_kind: str | None = _key("failure_kind")
    diverged_epoch: int | None = _key("diverged_epoch")
    did_not_learn: str | None = _key("did_not_learn")

    @classmethod
    def read(cls, user_attrs: Mapping[str, Any]) -> "TrialAttrs":
        values = {name: user_attrs.get(key) for name, key in _keys(cls).items()}
        values["worker"] = Worker.read(values["worker"])
        history = values["history"]
        values["history"] = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else None
        return cls(**values)

    def to_user_attrs(self) -> dict[str, Any]:
        return encode_trial_attrs(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


def encode_trial_attrs(**fields: Any) -> dict[str, Any]:
    """TrialAttrs fields as user attributes (stored keys, JSON values); None values are left out."""
    keys = _keys(TrialAttrs)
    out = {}
    for name, value in fields.items():
        if name not in keys:
            raise KeyError(f"{name}: not a trial attribute (ablate.storage.TrialAttrs)")
        if value is None:
            continue
        out[keys[name]] = value.to_attr() if isinstance(value, Worker) else value
    return out


def set_trial_attrs(trial: "optuna.Trial", **fields: Any) -> None:
    """Write TrialAttrs fields of a running trial (each one its own storage update)."""
    for key, value in encode_trial_attrs(**fields).items():
        trial.set_user_attr(key, value)


def unit_attrs(unit: Any, worker: Worker | None = None) -> dict[str, Any]:
    """The attributes that make a trial one attempt at a unit (ablate.scheduling.Unit)."""
    # A search's finalist has no [[variant]] entry in the study's attributes: its axes go with it.
    spec = unit.variant.axes() if unit.variant is not None and getattr(unit, "finalist", False) else None
    return encode_trial_attrs(unit=unit.key, variant=unit.variant.name if unit.variant is not None else None, kind=unit.kind,
                              index=unit.index, seed=unit.seed, worker=worker, spec=spec)


# ---------------------------------------------------------------- study user attributes


@dataclass(frozen=True)
class StudyAttrs:
    """A study's user attributes (docs/storage.md, "Study user attributes")."""

    ablate_version: str | None = _key("ablate_version")
    study_file: str | None = _key("study_file")
    study_path: str | None = _key("study_path")
    description: str | None = _key("description")
    dataset: str | None = _key("dataset")
    definition: str | None = _key("definition")  # canonical JSON: what decides the results
    variants: list[dict[str, Any]] | None = _key("variants")  # in study order, with params and MACs
    recipe: dict[str, Any] | None = _key("recipe")
    search: dict[str, Any] | None = _key("search")
    seeds: int | None = _key("seeds")
    first_seed: int | None = _key("first_seed")
    units: int | None = _key("units")
    objective: str | None = _key("objective")  # "val_error" | "test_error": what trial values are

    @classmethod
    def read(cls, user_attrs: Mapping[str, Any] | "StudyAttrs") -> "StudyAttrs":
        if isinstance(user_attrs, StudyAttrs):
            return user_attrs
        values = {name: user_attrs.get(key) for name, key in _keys(cls).items()}
        v = values["variants"]
        values["variants"] = [e for e in v if isinstance(e, dict)] if isinstance(v, list) else None
        return cls(**values)

    def to_user_attrs(self) -> dict[str, Any]:
        return {key: getattr(self, name) for name, key in _keys(type(self)).items() if getattr(self, name) is not None}

    def write(self, ostudy: "optuna.Study") -> None:
        for key, value in self.to_user_attrs().items():
            ostudy.set_user_attr(key, value)

    @property
    def metric(self) -> str:
        """What trial values and intermediate values measure."""
        return str(self.objective or "test_error")

    def variant_entries(self) -> dict[str, dict[str, Any]]:
        return {str(v.get("name")): v for v in self.variants or [] if v.get("name")}


def number(x: Any) -> float:
    """A stored number as float; None, strings and the like become NaN."""
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    return math.nan
