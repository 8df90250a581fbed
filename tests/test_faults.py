"""Storage faults: a transient error (a lost connection, a server restart, SQLite locked past its
busy timeout) is retried for a bounded time (ablate.storage.retry), then the worker goes on; past
the bound it stops with the one line it always printed. The PostgreSQL tests restart the
throwaway server of tests/conftest.py under running workers."""

from __future__ import annotations

import logging
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from test_workers import TINY

from ablate.runs.scheduling import study_units
from ablate.spec.study import parse_study
from ablate.storage import Candidate, TrialAttrs, claim, one_line, open_storage, rdb, trial_key
from ablate.storage.retry import Retrier, is_transient


def operational(message: str, cls: type = sqlalchemy.exc.OperationalError) -> Exception:
    return cls("SELECT 1", {}, Exception(message))


def wrapped(exc: Exception) -> Exception:
    """As Optuna raises it: StorageInternalError from the SQLAlchemy error."""
    try:
        try:
            raise exc
        except Exception as e:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from e
    except Exception as outer:
        return outer


@pytest.mark.parametrize("exc", [
    operational("terminating connection due to administrator command"),
    operational("server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally"),
    operational('connection failed: could not connect to server: Connection refused'),
    operational("the database system is starting up"),
    operational("database is locked"),
    operational("the connection is closed", sqlalchemy.exc.InterfaceError),
    wrapped(operational("database is locked")),
    wrapped(operational("consuming input failed: server closed the connection unexpectedly")),
])
def test_transient_errors(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    operational('database "nosuchdb" does not exist'),
    operational("disk I/O error"),
    sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")),
    wrapped(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))),
    ValueError("connection refused"),  # not a database's error, whatever it says
    optuna.exceptions.UpdateFinishedTrialError("finished"),
])
def test_other_errors_are_not_transient(exc):
    assert not is_transient(exc)


def test_a_transient_error_is_retried_and_the_worker_goes_on(caplog):
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise wrapped(operational("terminating connection due to administrator command"))
        return "done"

    with caplog.at_level(logging.WARNING, logger="ablate"):
        assert Retrier(30, "postgresql://db").call(flaky) == "done"
    lines = [r.getMessage() for r in caplog.records if r.name == "ablate"]
    assert len(calls) == 3 and len(lines) == 2, lines  # one line when it begins, one when it ends
    assert lines[0] == ("storage postgresql://db: terminating connection due to administrator command; "
                        "retrying for up to 30 s (--storage-retry)")
    assert lines[1].startswith("storage postgresql://db answers again after ")


def test_past_the_bound_the_original_error(caplog):
    error = operational("server closed the connection unexpectedly")
    calls = []

    def down():
        calls.append(1)
        raise error

    retrier = Retrier(0.8, "db")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ablate"), pytest.raises(sqlalchemy.exc.OperationalError) as caught:
        retrier.call(down)
    assert caught.value is error and one_line(caught.value) == "server closed the connection unexpectedly"
    assert 0.8 <= time.monotonic() - start < 3 and len(calls) >= 3
    # The outage goes on: the next call gives up at its first error, so a worker stops within the bound.
    calls.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        retrier.call(down)
    assert len(calls) == 1 and len([r for r in caplog.records if r.name == "ablate"]) == 1


def test_other_errors_and_no_retry_fail_at_once():
    calls = []

    def bad(exc):
        calls.append(1)
        raise exc

    with pytest.raises(sqlalchemy.exc.IntegrityError):
        Retrier(30, "db").call(bad, sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    with pytest.raises(sqlalchemy.exc.OperationalError):
        Retrier(0, "db").call(bad, operational("database is locked"))  # --storage-retry 0
    assert len(calls) == 2


def test_heartbeats_are_trusted_a_grace_period_after_an_outage(monkeypatch):
    from ablate.storage import retry

    monkeypatch.setattr(retry, "MAX_BACKOFF", 0.0)
    retrier = Retrier(30, "db")
    assert retrier.settled(0.3)
    retrier._failed(operational("database is locked"))
    assert not retrier.settled(0.3)  # no trial beats during an outage: none is taken for dead
    retrier._answered()
    assert not retrier.settled(0.3)  # nor until the workers have had a grace period to beat again
    time.sleep(0.4)
    assert retrier.settled(0.3)


# ---------------------------------------------------------------- through Optuna's storage, on SQLite


@pytest.fixture
def sqlite_url(tmp_path, monkeypatch):
    monkeypatch.setattr(rdb, "SQLITE_BUSY_SECONDS", 1)  # the busy timeout: 1 s, not a minute
    return f"sqlite:///{tmp_path / 'faults.db'}", tmp_path / "faults.db"


def hold_lock(path, seconds: float) -> threading.Thread:
    """Another process's long write transaction on the SQLite file, for `seconds`."""
    locked = threading.Event()

    def hold():
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        con.execute("COMMIT")
        con.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait()
    return thread


def test_sqlite_locked_past_the_busy_timeout_is_retried(sqlite_url, caplog):
    url, path = sqlite_url
    storage = open_storage(url, grace=30, retry=30)
    ostudy = optuna.create_study(study_name="s", storage=storage)
    holder = hold_lock(path, 2.5)
    with caplog.at_level(logging.WARNING, logger="ablate"):
        created = claim(storage, ostudy, [Candidate("u", "RUNNING", {}, {}, {trial_key("unit"): "u"})], lambda records: {"u"})
        storage.set_study_user_attr(ostudy._study_id, "k", 1)
    holder.join()
    assert len(created) == 1 and len(ostudy.get_trials()) == 1  # the claim, retried, made one trial
    lines = [r.getMessage() for r in caplog.records if r.name == "ablate"]
    assert len(lines) == 2 and "database is locked; retrying for up to 30 s" in lines[0], lines
    assert ostudy.user_attrs["k"] == 1


def test_sqlite_locked_past_the_bound_is_the_original_error(sqlite_url):
    url, path = sqlite_url
    storage = open_storage(url, grace=30, retry=1.5)
    ostudy = optuna.create_study(study_name="s", storage=storage)
    holder = hold_lock(path, 6)
    start = time.monotonic()
    try:
        with pytest.raises(Exception) as caught:
            storage.set_study_user_attr(ostudy._study_id, "k", 1)
        elapsed = time.monotonic() - start
    finally:
        holder.join()
    assert 1.5 <= elapsed < 5  # the bound, and at most one busy timeout (1 s) more
    assert one_line(caught.value) == "database is locked"


def test_a_repeated_state_change_that_had_committed_is_done(sqlite_url, monkeypatch):
    """The answer to a COMMIT lost with the connection: the repeat finds the trial finished as asked."""
    url, _ = sqlite_url
    storage = open_storage(url, grace=30, retry=30)
    ostudy = optuna.create_study(study_name="s", storage=storage)
    (claimed,) = claim(storage, ostudy, [Candidate("u", "RUNNING", {}, {}, {trial_key("unit"): "u"})], lambda records: {"u"})
    tid = claimed.trial_id
    original = optuna.storages.RDBStorage.set_trial_state_values
    calls = []

    def commit_then_lose(self, *args, **kwargs):
        calls.append(1)
        result = original(self, *args, **kwargs)
        if len(calls) == 1:
            raise wrapped(operational("server closed the connection unexpectedly"))
        return result

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", commit_then_lose)
    assert storage.set_trial_state_values(tid, TrialState.COMPLETE, [0.25]) is True
    assert len(calls) == 2 and storage.get_trial(tid).state == TrialState.COMPLETE and storage.get_trial(tid).value == 0.25
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # but not a change another worker made
        storage.set_trial_state_values(tid, TrialState.FAIL)


# ---------------------------------------------------------------- a real PostgreSQL server restarting


def wait_running(url: str, name: str, proc: subprocess.Popen, at_least: int = 1) -> None:
    """Until the study has `at_least` RUNNING trials with an epoch done (the workers train)."""
    deadline = time.time() + 300
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        try:
            trials = optuna.load_study(study_name=name, storage=url).get_trials(states=(TrialState.RUNNING,))
            if sum(bool(TrialAttrs.read(t.user_attrs).history) for t in trials) >= at_least:
                return
        except Exception:
            pass
        time.sleep(0.2)


def run_argv(path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ablate", "run", str(path), "--storage", url, "--device", "cpu", "--threads", "1",
            "--fuse", "off", "--no-report", *extra]


@pytest.fixture
def postgres(postgres):
    """The session's throwaway server, left as found: the studies a test made there are deleted
    after it (other modules' tests list the server's studies)."""
    yield postgres
    if postgres.ctl("status").returncode != 0:  # a test that stopped it: start it again
        postgres.ctl("start")
    storage = optuna.storages.RDBStorage(postgres.url)
    for name in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=name, storage=storage)
    storage.engine.dispose()


def test_a_database_restart_under_two_workers(tmp_path, postgres):
    path = tmp_path / "blip.toml"
    path.write_text(TINY.format(seeds=3, epochs=4, images=1024).replace('name = "many"', 'name = "blip"'))
    # A grace period shorter than the outage: trials that could not beat during it are not taken for dead.
    proc = subprocess.Popen(run_argv(path, postgres.url, "--workers", "2", "--grace-period", "3"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_running(postgres.url, "blip", proc, at_least=2)
    # The restart (back within a second), then one that takes a while (a failover, an
    # upgrade): both workers are in the middle of a trial.
    done = postgres.ctl("restart", "-m", "fast")
    assert done.returncode == 0, done.stderr
    time.sleep(1)
    done = postgres.ctl("stop", "-m", "fast")
    assert done.returncode == 0, done.stderr
    time.sleep(3)
    done = postgres.ctl("start")
    assert done.returncode == 0, done.stderr
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "retrying for up to 120 s (--storage-retry)" in err and "answers again after" in err, err
    assert "note: storage" not in err  # each line once, as a warning

    trials = optuna.load_study(study_name="blip", storage=postgres.url).get_trials()
    units = sorted(u.key for u in study_units(parse_study(path.read_text())))
    complete = Counter(TrialAttrs.read(t.user_attrs).unit for t in trials if t.state == TrialState.COMPLETE)
    assert sorted(complete) == units and set(complete.values()) == {1}, complete
    assert not [t.number for t in trials if t.state == TrialState.FAIL]  # no trial lost to the outage


def test_a_database_away_past_the_bound_stops_the_worker_with_one_line(tmp_path, postgres):
    path = tmp_path / "gone.toml"
    path.write_text(TINY.format(seeds=2, epochs=20, images=1024).replace('name = "many"', 'name = "gone"'))
    proc = subprocess.Popen(run_argv(path, postgres.url, "--storage-retry", "2"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_running(postgres.url, "gone", proc)
        assert postgres.ctl("stop", "-m", "fast").returncode == 0
        _, err = proc.communicate(timeout=120)
    finally:
        assert postgres.ctl("start").returncode == 0  # for the other tests
    # A unit may finish before the stop (its "unit: complete ..." line is the run's progress, not
    # the outage): the outage itself is one warning, then the one error.
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"^\S+/\S+/\d+: \w+ ", line)]
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert lines[:-1] == [next(line for line in lines if "retrying for up to 2 s (--storage-retry)" in line)], err
    assert lines[0].startswith("warning: storage postgresql+psycopg://postgres:***@127.0.0.1:"), err
    assert lines[-1].startswith("error: storage postgresql+psycopg://postgres:***@127.0.0.1:"), err
    assert lines[-1].endswith("; what is stored stays; fix it and run the same command again"), err
