"""The storage contract: what ablate keeps in an Optuna RDB storage, and how. docs/storage.md
says it in words; this module is the only code that knows the key names and encodings.

    trial params      spec_params(spec) / spec_from_params(params), axis_values(...), flat(value)
    trial attributes  TrialAttrs (read, to_user_attrs), set_trial_attrs(trial, **fields), Worker
    study attributes  StudyAttrs (read, to_user_attrs, write)
    the definition    definition(study), growth(stored, mine): a study may grow, not change
    records           records(trials): trials as plain `TrialRecord`s for scheduling (ablate.scheduling)
    opening           open_for_run(url, grace), open_for_reading(url), safe_url(url), one_line(exc)
    claiming          claim(storage, ostudy, candidates, claimable): exactly-once trial creation
    workers           heartbeats(storage, ostudy): the last heartbeat of every running trial

The driver writes through it; the tables, the report, the CLI and the test fixtures read (and
write) through it, so none of them can drift from the others. Adding an axis is a change to
`ablate.variants.AXES` alone; renaming a key is a change to a field's `key` here.

Optuna's RDB internals (its ORM models, the session that creates a trial) are touched here and
nowhere else: claiming a unit must read and create under one database lock, which Optuna's
public API cannot do (docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from ablate import failpoints
from ablate.variants import AXES, VariantSpec, make_variant

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from ablate.study import Study

DEFAULT_STORAGE = "sqlite:///ablate.db"
SQLITE_BUSY_SECONDS = 60  # how long a worker waits for SQLite's write lock before giving up


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


def recipe_dict(recipe: Any) -> dict[str, Any]:
    """A Recipe as stored (`recipe` attributes): a dict, tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(recipe).items()}


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
    kind: str | None = _key("kind")  # "search" | "final"
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
    return encode_trial_attrs(unit=unit.key, variant=unit.variant.name, kind=unit.kind, index=unit.index, seed=unit.seed,
                              worker=worker)


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


# ---------------------------------------------------------------- the definition: what a unit means


def definition(study: "Study") -> str:
    """Canonical JSON of everything that decides the results; a re-run must agree with it."""
    from ablate.study import FIRST_SEED

    doc: dict[str, Any] = {
        "dataset": study.dataset,
        "variants": [s.axes() for s in study.variants],
        "recipe": recipe_dict(study.recipe),
        "search": study.search.describe() if study.search else None,
        "seeds": study.seeds,
    }
    if study.first_seed != FIRST_SEED:  # only when moved: storages written before [seeds] start keep their definition
        doc["first_seed"] = study.first_seed
    if study.overrides:
        doc["overrides"] = study.overrides
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


# ---------------------------------------------------------------- trials as plain records


@dataclass(frozen=True)
class TrialRecord:
    """What scheduling needs of a stored trial (ablate.scheduling): plain data, no Optuna."""

    number: int
    state: str  # an Optuna TrialState name: WAITING, RUNNING, COMPLETE, PRUNED, FAIL
    unit: str | None = None
    failure_kind: str | None = None  # FAIL only (ablate.outcomes)
    params: Mapping[str, Any] = field(default_factory=dict)  # with the fixed params it was created with
    value: float | None = None
    val_error: float | None = None


def record(number: int, state: str, user_attrs: Mapping[str, Any], params: Mapping[str, Any] | None = None,
           value: float | None = None) -> TrialRecord:
    from ablate import outcomes

    a = TrialAttrs.read(user_attrs)
    return TrialRecord(number, state, a.unit, outcomes.failure_kind(state, user_attrs), dict(params or {}), value,
                       a.val_error if isinstance(a.val_error, (int, float)) else None)


def records(trials: Iterable["FrozenTrial"]) -> list[TrialRecord]:
    """Stored trials as records, in trial order. A trial's params include those it was enqueued
    with (Optuna's `fixed_params`), for a trial killed before its objective set any."""
    return [record(t.number, t.state.name, t.user_attrs, {**t.system_attrs.get("fixed_params", {}), **t.params},
                   t.value if t.values else None) for t in trials]


# ---------------------------------------------------------------- opening


def safe_url(storage: str) -> str:
    """The storage URL without its password, for messages and the provenance section."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: show it without anything that looks like user:password@
        return re.sub(r"//[^/@]*@", "//***@", storage)


def one_line(exc: BaseException) -> str:
    """A storage error in one line: the database's own message, without SQLAlchemy's SQL text and link."""
    cause = exc.__cause__ if type(exc).__name__ == "StorageInternalError" and exc.__cause__ is not None else exc
    orig = getattr(cause, "orig", None)  # SQLAlchemy wraps the driver's exception
    text = str(orig if orig is not None else cause).strip()
    text = re.split(r"\n|\[SQL: |\(Background on this error at", text)[0].strip()
    return text or type(exc).__name__


def sqlite_path(storage: str) -> Path | None:
    """The file of an SQLite URL (None for other databases and in-memory SQLite)."""
    if not storage.startswith("sqlite:///"):
        return None
    path = storage[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def backend(storage: "optuna.storages.RDBStorage") -> str:
    return storage.engine.dialect.name  # "sqlite", "postgresql", "mysql"


def _check_url(url: str) -> Any:
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise StorageError(f"--storage: {url!r} is not a database URL; use e.g. {DEFAULT_STORAGE} or "
                           "postgresql+psycopg://user@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not Path(database).expanduser().parent.exists():
            raise StorageError(f"--storage: the folder of {database} does not exist; create it or choose another path")
    return parsed


def _sqlite_for_workers(engine: Any) -> None:
    """SQLite shared by many processes (docs/distributed.md): write-ahead logging, so readers
    never wait for a writer; a busy timeout, so a writer waits for the lock instead of failing;
    and every transaction begun with BEGIN IMMEDIATE, so it takes the write lock before it reads.
    Python's sqlite3 otherwise begins a transaction only at its first write, so Optuna's
    read-then-update steps (failing a stale trial, finishing one) are not atomic between
    processes, and a claim's read could be stale by the time it writes."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN: ours below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_SECONDS * 1000}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners: gone


def _quiet(fn: Callable[[], Any]) -> Any:
    import optuna

    with warnings.catch_warnings():  # heartbeats are experimental in Optuna; they are what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return fn()


def open_storage(url: str, grace: int | None = None) -> "optuna.storages.RDBStorage":
    """Optuna's RDB storage at `url`. With `grace` (seconds), for running trials: Optuna's
    heartbeat every grace/3 seconds, a trial whose heartbeat is older than `grace` stale; on
    SQLite, set up for many processes (`_sqlite_for_workers`). Without, for reading."""
    import optuna

    parsed = _check_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {}
    if sqlite:
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    if grace is not None:
        kwargs.update(heartbeat_interval=heartbeat_interval(grace), grace_period=grace)
    attempts = 8 if sqlite else 3
    for attempt in range(attempts):
        try:
            storage = _quiet(lambda: optuna.storages.RDBStorage(url, **kwargs))
            break
        except ModuleNotFoundError as exc:
            raise StorageError(f"--storage: {safe_url(url)}: the database driver is not installed ({exc.name}); "
                               "install it or use SQLite") from None
        except Exception as exc:  # SQLAlchemy and Optuna errors: connection refused, bad schema, ...
            # Many workers creating one new storage at once race to create its tables: all but
            # one fail ("already exists", a duplicate key); the next attempt finds them made.
            racing = any(w in str(exc).lower() for w in ("already exists", "unique", "duplicate", "locked"))
            if racing and attempt < attempts - 1:
                time.sleep(random.uniform(0.05, 0.5))
                continue
            raise StorageError(f"--storage: cannot open {safe_url(url)}: {one_line(exc)}") from None
    if sqlite and grace is not None:
        _sqlite_for_workers(storage.engine)
    return storage


def heartbeat_interval(grace: int) -> int:
    return max(1, grace // 3)


# ---------------------------------------------------------------- claiming a unit, exactly once


def _models() -> Any:
    from optuna.storages._rdb import models

    return models


def _lock(session: Any, storage: "optuna.storages.RDBStorage", study_id: int) -> None:
    """The study's claim lock, held to the end of the session's transaction. SQLite: the
    transaction began with BEGIN IMMEDIATE (`_sqlite_for_workers`), which is the lock.
    PostgreSQL: a transaction-level advisory lock on the study. Others: the study's row."""
    from sqlalchemy import text

    kind = backend(storage)
    if kind == "sqlite":
        session.connection()  # begins the transaction: BEGIN IMMEDIATE, which waits for the write lock
    elif kind == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:ns, :study)"), {"ns": 0x61626C, "study": study_id})
    elif kind != "sqlite":
        _models().StudyModel.find_or_raise_by_id(study_id, session, for_update=True)


def _unit_records(session: Any, study_id: int) -> list[TrialRecord]:
    """Every trial of the study with its unit and how it failed: what claiming decides on."""
    from ablate import outcomes

    m = _models()
    keys = (_keys(TrialAttrs)["unit"], _keys(TrialAttrs)["failure_kind"], _keys(TrialAttrs)["failure"])
    trials = session.query(m.TrialModel.trial_id, m.TrialModel.number, m.TrialModel.state).filter(
        m.TrialModel.study_id == study_id).order_by(m.TrialModel.trial_id).all()
    attrs: dict[int, dict[str, Any]] = {}
    rows = session.query(m.TrialUserAttributeModel.trial_id, m.TrialUserAttributeModel.key, m.TrialUserAttributeModel.value_json).join(
        m.TrialModel, m.TrialModel.trial_id == m.TrialUserAttributeModel.trial_id).filter(
        m.TrialModel.study_id == study_id, m.TrialUserAttributeModel.key.in_(keys)).all()
    for trial_id, key, value in rows:
        attrs.setdefault(trial_id, {})[key] = json.loads(value)
    out = []
    for trial_id, number, state in trials:
        ua = attrs.get(trial_id, {})
        out.append(TrialRecord(number, state.name, ua.get(keys[0]), outcomes.failure_kind(state.name, ua)))
    return out


@dataclass(frozen=True)
class Candidate:
    """A trial to create for a unit: its state (RUNNING: this worker runs it; FAIL: the unit is
    recorded as impossible), params with their distributions, and user attributes."""

    unit: str
    state: str
    params: Mapping[str, Any]
    distributions: Mapping[str, Any]
    user_attrs: Mapping[str, Any]
    group: str = ""  # units of one group may be claimed together (a variant's: ablate run --fuse)


def claim(storage: "optuna.storages.RDBStorage", ostudy: "optuna.Study", candidates: Sequence[Candidate],
          claimable: Callable[[list[TrialRecord]], set[str]], limit: int = 1) -> list[int]:
    """Create the trials of up to `limit` candidates, each unit exactly once across every process.

    `candidates` come in order of preference. Under the study's lock (`_lock`) the trials are
    read again and `claimable(records)` says which units may still be claimed (ablate.scheduling);
    the first claimable candidate is taken, with further ones of its `group` up to `limit`, and
    their trials are created before the lock is released: no other process can claim them after.
    A RUNNING trial gets its first heartbeat in the same transaction, so a worker killed before
    its heartbeat thread starts still leaves a trial that goes stale. Returns the trial ids
    created (none: another worker was quicker; plan again).

    Params are written with their own distributions: a study that grew (new variants, so new
    categorical choices) keeps its older trials as they were.
    """
    import optuna
    from sqlalchemy.orm import Session

    m = _models()
    created: list[int] = []
    with Session(storage.engine) as session, session.begin():
        _lock(session, storage, ostudy._study_id)
        failpoints.reach("claim")
        free = claimable(_unit_records(session, ostudy._study_id))
        chosen = [c for c in candidates if c.unit in free]
        if chosen:
            chosen = [c for c in chosen if c.group == chosen[0].group][:max(1, limit)]
        for c in chosen:
            state = optuna.trial.TrialState[c.state]
            template = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING if state == optuna.trial.TrialState.FAIL else state,
                                                 user_attrs=dict(c.user_attrs))
            trial = storage._get_prepared_new_trial(ostudy._study_id, template, session)
            session.flush()
            for name, value in c.params.items():
                dist = c.distributions[name]
                storage._set_trial_param_without_commit(session, trial.trial_id, name, dist.to_internal_repr(value), dist,
                                                        previous_distribution=dist)
            if state == optuna.trial.TrialState.RUNNING:
                session.add(m.TrialHeartbeatModel(trial_id=trial.trial_id))
            else:
                trial.state = state
                trial.datetime_complete = trial.datetime_start
            created.append(trial.trial_id)
    return created


def heartbeats(storage: "optuna.storages.RDBStorage", trial_ids: Sequence[int]) -> dict[int, Any]:
    """The last heartbeat of each trial that has one (UTC, as the database's clock keeps it),
    and the database's time now under the key -1; Optuna has no public way to ask."""
    from sqlalchemy import func
    from sqlalchemy.orm import Session

    m = _models()
    with Session(storage.engine) as session:
        now = session.execute(func.now()).scalar()
        rows = session.query(m.TrialHeartbeatModel.trial_id, m.TrialHeartbeatModel.heartbeat).filter(
            m.TrialHeartbeatModel.trial_id.in_(list(trial_ids))).all() if trial_ids else []
    out = {tid: beat for tid, beat in rows}
    out[-1] = now
    return out


def number(x: Any) -> float:
    """A stored number as float; None, strings and the like become NaN."""
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    return math.nan
