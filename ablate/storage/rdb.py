"""Optuna's RDB storage: opening it for many workers, claiming a unit exactly once, heartbeats.

Optuna's RDB internals (its ORM models, the session that creates a trial) are touched here and
in `ablate.storage.retry` (which wraps RDBStorage's methods, private ones included), nowhere else in ablate: claiming a unit must read and create under one database lock, which
Optuna's public API cannot do (docs/distributed.md). A test (tests/test_layers.py) holds every
other module to Optuna's public names.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ablate import failpoints
from ablate.spec.paths import user_path
from ablate.storage.contract import DEFAULT_STORAGE, SQLITE_BUSY_SECONDS, STORAGE_RETRY_SECONDS, StorageError, trial_key
from ablate.storage.outcomes import TrialRecord, record
from ablate.storage.retry import Retrier, one_line, retrier, retrying_storage_class

__all__ = ['safe_url', 'one_line', 'sqlite_path', 'in_memory', 'storage_url', 'backend', 'open_storage', 'heartbeat_interval', 'Candidate', 'Claimed', 'claim', 'trial_id', 'rdb_of', 'heartbeats', 'retrier']

if TYPE_CHECKING:
    import optuna

# ---------------------------------------------------------------- opening


def safe_url(storage: str) -> str:
    """The storage URL without its password, for messages and the provenance section."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: show it without anything that looks like user:password@
        return re.sub(r"//[^/@]*@", "//***@", storage)


def sqlite_path(storage: str) -> Path | None:
    """The database file of an SQLite URL, `~` expanded (ablate.spec.paths); None for other
    databases and for in-memory SQLite. The one parse of SQLite URLs: opening the database,
    checking its folder and placing checkpoints beside it all go through here."""
    if not storage.startswith("sqlite:"):
        return None
    try:
        from sqlalchemy.engine import make_url

        database = make_url(storage).database
    except Exception:  # not a URL at all: _check_url says so
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return user_path(database, "--storage")


def in_memory(storage: str) -> bool:
    """An SQLite database that lives in one process's memory: nothing in it outlives the run."""
    if not storage.startswith("sqlite:"):
        return False
    rest = storage[len("sqlite:"):].split("?", 1)[0]
    return rest in ("", "//", "///", "///:memory:") or ":memory:" in rest or "mode=memory" in storage


def storage_url(storage: str) -> str:
    """The URL as the database is opened: an SQLite file with `~` expanded; others unchanged."""
    path = sqlite_path(storage)
    if path is None:
        return storage
    query = storage.split("?", 1)[1] if "?" in storage else ""
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def backend(storage: "optuna.storages.RDBStorage") -> str:
    return storage.engine.dialect.name  # "sqlite", "postgresql", "mysql"


def _check_url(url: str) -> Any:
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise StorageError(f"--storage: {url!r} is not a database URL; use e.g. {DEFAULT_STORAGE} or "
                           "postgresql+psycopg://user@host/db") from None
    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise StorageError(f"--storage: the folder of {path} does not exist; create it or choose another path")
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


def open_storage(url: str, grace: int | None = None, retry: float = STORAGE_RETRY_SECONDS) -> "optuna.storages.RDBStorage":
    """Optuna's RDB storage at `url`. With `grace` (seconds), for running trials: Optuna's
    heartbeat every grace/3 seconds, a trial whose heartbeat is older than `grace` stale; on
    SQLite, set up for many processes (`_sqlite_for_workers`). Without, for reading.

    Once open, a storage that goes away is retried for up to `retry` seconds (ablate.storage.retry).
    Opening itself is not: a wrong host or port is one error at once, not a wait."""
    import optuna
    import sqlalchemy

    parsed = _check_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    url = _sqlite_open_url(url, write=grace is not None) if sqlite else url
    kwargs: dict[str, Any] = {}
    if sqlite:
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    else:  # a pooled connection that a server restart or a firewall closed is replaced before use
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    if grace is not None:
        kwargs.update(heartbeat_interval=heartbeat_interval(grace), grace_period=grace)
    attempts = 8 if sqlite else 3
    for attempt in range(attempts):
        try:
            storage = _quiet(lambda: retrying_storage_class()(url, **kwargs))
            break
        except ImportError as exc:  # Optuna re-raises a missing DB-API module as a plain ImportError
            raise StorageError(f"--storage: {safe_url(url)}: the database driver is not installed ({exc.name or one_line(exc)}); "
                               "install it, or use SQLite or PostgreSQL (postgresql+psycopg://...)") from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, RuntimeError) as exc:
            # Connection refused, not a database, a schema of another Optuna (RuntimeError); an
            # error of ours or an API change (TypeError, AttributeError) is a bug and propagates.
            # Many workers creating one new storage at once race to create its tables: all but
            # one fail ("already exists", a duplicate key); the next attempt finds them made.
            racing = any(w in str(exc).lower() for w in ("already exists", "unique", "duplicate", "locked"))
            if racing and attempt < attempts - 1:
                time.sleep(random.uniform(0.05, 0.5))
                continue
            raise StorageError(f"--storage: cannot open {safe_url(url)}: {one_line(exc)}") from None
    if sqlite and grace is not None:
        _sqlite_for_workers(storage.engine)
    storage.retrier = Retrier(retry, safe_url(url))
    return storage


def _sqlite_open_url(url: str, write: bool) -> str:
    """The URL an SQLite file is opened with. A run needs to write: a read-only folder (a mount, a
    copy off a cluster) is named as the reason it cannot. A reader (ls, show, report, export)
    that cannot write there opens the file read-only and immutable: SQLite in WAL mode otherwise
    needs to create its -shm file beside the database, even to read."""
    path = sqlite_path(url)
    if path is None:
        return url
    folder = path.absolute().parent
    writable = os.access(folder, os.W_OK | os.X_OK) and (not path.exists() or os.access(path, os.W_OK))
    if writable:
        return storage_url(url)
    if write:
        raise StorageError(f"--storage: {path} is in a read-only folder ({folder}); a run writes there: copy the "
                           "database to a writable folder, or choose another --storage")
    if not path.is_file():
        return storage_url(url)  # missing: the reader says so
    return f"sqlite:///file:{path.absolute()}?mode=ro&immutable=1&uri=true"


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

    m = _models()
    # What scheduling reads of a trial (ablate.storage.outcomes.record): a search's finalists are
    # chosen from the samples' errors, costs and axes, so those are read too.
    keys = tuple(trial_key(k) for k in ("unit", "failure_kind", "failure", "duplicate_of", "spec", "val_error", "macs", "params"))
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
        out.append(record(number, state.name, ua))
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


@dataclass(frozen=True)
class Claimed:
    """A trial created by `claim`: its id, and whether this worker runs it (else it was recorded failed)."""

    trial_id: int
    running: bool


def claim(storage: "optuna.storages.RDBStorage", ostudy: "optuna.Study", candidates: Sequence[Candidate],
          claimable: Callable[[list[TrialRecord]], set[str]], limit: int = 1) -> list[Claimed]:
    """Create the trials of up to `limit` candidates, each unit exactly once across every process.

    `candidates` come in order of preference. Under the study's lock (`_lock`) the trials are
    read again and `claimable(records)` says which units may still be claimed (ablate.runs.scheduling);
    the first claimable candidate is taken, with further ones of its `group` up to `limit`, and
    their trials are created before the lock is released: no other process can claim them after.
    A RUNNING trial gets its first heartbeat in the same transaction, so a worker killed before
    its heartbeat thread starts still leaves a trial that goes stale. Returns the trials created
    (none: another worker was quicker; plan again).

    The rows are written with Optuna's ORM models (stable since Optuna 2), not its private
    methods, whose signatures change between releases. Params are written with their own
    distributions: a study that grew (new variants, so new categorical choices) keeps its older
    trials as they were.

    A transient error (ablate.storage.retry) claims again from the start, under the lock, from
    the trials committed: a transaction that failed was rolled back, so nothing is claimed twice.
    A connection lost at COMMIT may hide a claim that did commit; the retry then sees its units
    taken and claims others (or none), and the trials it left, RUNNING with a first heartbeat and
    run by nobody, go stale after the grace period and are retried like a killed worker's. A
    unit so costs a grace period, never a second counting trial.
    """
    return retrier(storage).call(_claim_once, storage, ostudy, candidates, claimable, limit)


def _claim_once(storage: "optuna.storages.RDBStorage", ostudy: "optuna.Study", candidates: Sequence[Candidate],
                claimable: Callable[[list[TrialRecord]], set[str]], limit: int) -> list[Claimed]:
    from sqlalchemy.orm import Session

    study_id = _study_id(ostudy)
    created: list[Claimed] = []
    with Session(storage.engine) as session, session.begin():
        _lock(session, storage, study_id)
        failpoints.reach("claim")
        free = claimable(_unit_records(session, study_id))
        chosen = [c for c in candidates if c.unit in free]
        if chosen:
            chosen = [c for c in chosen if c.group == chosen[0].group][:max(1, limit)]
        for c in chosen:
            created.append(_create_trial(session, study_id, c))
    return created


def _create_trial(session: Any, study_id: int, c: Candidate) -> Claimed:
    """One trial's rows, as Optuna's own `create_new_trial` writes them, in the claim's transaction."""
    import datetime

    from optuna.distributions import distribution_to_json
    from optuna.trial import TrialState

    m = _models()
    trial = m.TrialModel(study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=datetime.datetime.now())
    session.add(trial)
    session.flush()  # the trial's id
    for key, value in c.user_attrs.items():
        session.add(m.TrialUserAttributeModel(trial_id=trial.trial_id, key=key, value_json=json.dumps(value)))
    for name, value in c.params.items():
        dist = c.distributions[name]
        session.add(m.TrialParamModel(trial_id=trial.trial_id, param_name=name, param_value=dist.to_internal_repr(value),
                                      distribution_json=distribution_to_json(dist)))
    running = c.state == "RUNNING"
    if running:
        session.add(m.TrialHeartbeatModel(trial_id=trial.trial_id))
    else:
        trial.state = TrialState[c.state]
        trial.datetime_complete = trial.datetime_start
    trial.number = trial.count_past_trials(session)
    session.add(trial)
    return Claimed(trial.trial_id, running)


def _naive(moment: Any) -> Any:
    return moment.replace(tzinfo=None) if getattr(moment, "tzinfo", None) is not None else moment


def _study_id(ostudy: "optuna.Study") -> int:
    return ostudy._study_id


def trial_id(trial: Any) -> int:
    """The storage's id of a trial (FrozenTrial or Trial); Optuna keeps it private."""
    return trial._trial_id


def rdb_of(ostudy: "optuna.Study") -> "optuna.storages.RDBStorage":
    """The RDB storage behind a loaded study (Optuna wraps it in a cache)."""
    storage = ostudy._storage
    return getattr(storage, "_backend", storage)


def heartbeats(storage: "optuna.storages.RDBStorage", trial_ids: Sequence[int]) -> dict[int, Any]:
    """The last heartbeat of each trial that has one (UTC, as the database's clock keeps it),
    and the database's time now under the key -1; Optuna has no public way to ask."""
    return retrier(storage).call(_heartbeats_once, storage, trial_ids)


def _heartbeats_once(storage: "optuna.storages.RDBStorage", trial_ids: Sequence[int]) -> dict[int, Any]:
    from sqlalchemy import func
    from sqlalchemy.orm import Session

    m = _models()
    with Session(storage.engine) as session:
        now = session.execute(func.now()).scalar()
        rows = session.query(m.TrialHeartbeatModel.trial_id, m.TrialHeartbeatModel.heartbeat).filter(
            m.TrialHeartbeatModel.trial_id.in_(list(trial_ids))).all() if trial_ids else []
    # PostgreSQL's now() is zone-aware while the heartbeat column is not (it holds the session's
    # wall time): both as naive wall times of the database's session, so they subtract.
    out = {tid: _naive(beat) for tid, beat in rows}
    out[-1] = _naive(now)
    return out
