"""Transient storage errors, retried for a bounded time (docs/distributed.md, "When the database goes away for a while").

A managed database fails over, restarts for an upgrade or drops an idle connection; an SQLite
file stays locked past the busy timeout while another process holds a long transaction. A
worker that died of such a blip would lose its allocation and its trial in progress, so every
storage call of ablate goes through one `Retrier`: an error that `is_transient` is retried with
backoff until the storage has failed for `seconds` in a row (`STORAGE_RETRY_SECONDS`, `ablate run
--storage-retry`); only then does the original error go up, to the one line the CLI prints today.

What a retry may repeat, and why that is safe: Optuna's RDBStorage runs every method in its own
transaction and rolls it back on any error, and ablate's `claim` and `heartbeats` do the same
(`ablate.storage.rdb`). A retried call therefore starts from what the database committed. When
the connection is lost at COMMIT itself nobody can know whether it committed, so a method is
retried only when repeating a committed call is harmless: reads; upserts (user attributes,
intermediate values, heartbeats); params (a second insert is an integrity error Optuna ignores);
a state change, whose repeat raises UpdateFinishedTrialError and is taken as done when the stored
state is the one asked for (`set_trial_state_values` below); `claim`, which decides again under
its lock from the trials committed (rdb.claim says what happens to a claim that did commit).
Creating a trial outside `claim` is not retried: a repeat would make a second trial.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    import optuna

__all__ = ["is_transient", "one_line", "Retrier", "retrier", "retrying_storage_class"]

T = TypeVar("T")
log = logging.getLogger("ablate")
MAX_BACKOFF = 5.0  # seconds between two attempts, at most

#: SQLSTATEs of a connection that went or never came: class 08 (connection exception), and the
#: server shutting down (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now).
_STATES = ("08", "57P01", "57P02", "57P03")
#: The same, as drivers word it where they give no SQLSTATE (SQLite, MySQL, a socket that broke).
_MARKERS = (
    "terminating connection", "server closed the connection", "could not connect", "connection refused",
    "connection is closed", "connection already closed", "the database system is", "consuming input failed",
    "connection reset", "ssl connection has been closed", "lost connection", "server has gone away",
    "no connection to the server", "connection timed out", "database is locked",
)


def one_line(exc: BaseException) -> str:
    """A storage error in one line: the database's own message, without SQLAlchemy's SQL text and link."""
    cause = exc.__cause__ if type(exc).__name__ == "StorageInternalError" and exc.__cause__ is not None else exc
    orig = getattr(cause, "orig", None)  # SQLAlchemy wraps the driver's exception
    text = str(orig if orig is not None else cause).strip()
    text = re.split(r"\n|\[SQL: |\(Background on this error at", text)[0].strip()
    return text or type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is the database being away for a while (a lost or refused connection, a
    server restarting, SQLite's lock held past the busy timeout) rather than a fault of the
    request, which a retry would only repeat. Looks through Optuna's StorageInternalError and
    SQLAlchemy's wrapper to the driver's own error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "connection_invalidated", False):  # SQLAlchemy saw the connection die
            return True
        orig = getattr(exc, "orig", None)
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if isinstance(state, str) and state.startswith(_STATES):
            return True
        # Only errors that are a database's own: any exception may say "connection refused".
        if any(type(e).__name__ in ("OperationalError", "InterfaceError") for e in (exc, orig) if e is not None):
            text = f"{exc} {orig or ''}".lower()
            if any(m in text for m in _MARKERS):
                return True
        exc = exc.__cause__  # StorageInternalError is raised `from` the SQLAlchemy error
    return False


_inside = threading.local()  # a retried call that makes storage calls of its own: only the outermost retries


class Retrier:
    """Runs storage calls, retrying transient errors until the storage has failed for `seconds`
    in a row. One per storage, shared by its threads (the heartbeat's too): the outage is the
    storage's, so once it has lasted `seconds` every call fails at its first error, and a worker
    stops within the bound however many calls it has left to make."""

    def __init__(self, seconds: float, where: str):
        self.seconds, self.where = seconds, where
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current outage began (time.monotonic())
        self._ended: float | None = None  # when the last one ended

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if getattr(_inside, "active", False):
            return fn(*args, **kwargs)
        _inside.active = True
        try:
            delay = 0.2
            while True:
                try:
                    out = fn(*args, **kwargs)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    left = self._failed(exc)
                    if left <= 0:
                        raise
                    # Jitter: workers that lost the server together do not all come back at once.
                    time.sleep(min(left, delay * random.uniform(0.5, 1.0)))
                    delay = min(2 * delay, MAX_BACKOFF)
                    continue
                self._answered()
                return out
        finally:
            _inside.active = False

    def _failed(self, exc: BaseException) -> float:
        """Notes a transient failure; the seconds left to retry."""
        if self.seconds <= 0:  # retrying is off
            return 0.0
        now = time.monotonic()
        with self._lock:
            if self._since is None:  # one line when the outage begins, not one per call or attempt
                self._since = now
                log.warning(f"storage {self.where}: {one_line(exc)}; retrying for up to {self.seconds:g} s "
                            "(--storage-retry)")
            return self._since + self.seconds - now

    def _answered(self) -> None:
        if self._since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self._since is not None:
                self._ended = time.monotonic()
                log.warning(f"storage {self.where} answers again after {self._ended - self._since:.0f} s; going on")
                self._since = None

    def settled(self, grace: float) -> bool:
        """Whether heartbeats can be trusted again: no outage now, and since the last one ended
        every worker has had a grace period (and one backoff) to beat again. During an outage
        no trial beats, so afterwards every running trial looks stale for a while; failing
        them then would throw away the work the retries were there to keep."""
        with self._lock:
            return self._since is None and (self._ended is None or time.monotonic() - self._ended > grace + MAX_BACKOFF)


def retrier(storage: Any) -> Retrier:
    """The storage's Retrier; one that never retries for a storage that was not opened by ablate."""
    found = getattr(storage, "retrier", None)
    return found if isinstance(found, Retrier) else Retrier(0, "")


#: RDBStorage methods that are safe to repeat (module docstring), retried by the class below.
RETRIED = (
    "create_new_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies", "set_trial_param", "_set_trial_param",
    "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "_get_trials", "get_best_trial",
    "_get_best_trial_id", "record_heartbeat", "_get_stale_trial_ids",
)

_class: Any = None


def retrying_storage_class() -> type["optuna.storages.RDBStorage"]:
    """Optuna's RDBStorage whose methods in `RETRIED`, and `set_trial_state_values`, go through
    the instance's `retrier`. A subclass, not a proxy: Optuna wraps an RDBStorage in its cache
    and checks for one (heartbeats), and both keep working."""
    global _class
    if _class is not None:
        return _class
    import optuna
    from optuna.storages import RDBStorage

    def retried(name: str) -> Callable[..., Any]:
        method = getattr(RDBStorage, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self.retrier.call(method, self, *args, **kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    def set_trial_state_values(self: Any, trial_id: int, state: Any, values: Any = None) -> bool:
        attempts = 0

        def once() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A repeat after a commit whose answer was lost: done, if the stored state is ours.
                if attempts > 1 and RDBStorage.get_trial(self, trial_id).state == state:
                    return True
                raise

        return self.retrier.call(once)

    body = {name: retried(name) for name in RETRIED if hasattr(RDBStorage, name)}
    body["set_trial_state_values"] = set_trial_state_values
    body["retrier"] = Retrier(0, "")  # replaced per instance by open_storage
    _class = type("RetryingRDBStorage", (RDBStorage,), body)
    return _class
