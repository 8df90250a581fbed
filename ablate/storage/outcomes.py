"""How a trial ended, in the words ablate stores (docs/storage.md): why it failed, whose fault
that was, and whether a run that completed learned anything.

Read and written through this module by the driver (what to retry), the tables and the report
(what enters the means, what the failures section says) and `ablate run` (its exit status).

A failure is the unit's *own* when running it again would fail again: it diverged, ran out of
memory or raised. Those are results, kept and not retried unless asked (`ablate run
--retry-failed`). A failure that is *not its own* (the run was interrupted or killed, or its
checkpoint could not be written) says nothing about the unit: the next run retries it at once,
from its last checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ablate.storage.contract import TrialAttrs, trial_key

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

#: Trial user attributes (their names are ablate.storage's).
FAILURE = trial_key("failure")  # why it failed, one line
FAILURE_KIND = trial_key("failure_kind")  # one of KINDS
DID_NOT_LEARN = trial_key("did_not_learn")  # on a COMPLETE final run whose training error stayed at chance: why

# The unit's own failures: not retried unless asked.
DIVERGED = "diverged"  # the loss became NaN or Inf
OUT_OF_MEMORY = "out-of-memory"
ERROR = "error"  # training raised
NO_RECIPE = "no-recipe"  # a final run of a variant none of whose search trials completed
# Not the unit's fault: retried by the next run.
INTERRUPTED = "interrupted"  # SIGINT or SIGTERM (Ctrl-C, timeout, Slurm, Kubernetes)
KILLED = "killed"  # the process died mid-trial; Optuna's heartbeat failed the trial (no attributes)
STORAGE = "storage"  # its checkpoint could not be written (a full disk)

# An architecture search's samples that were never trained: they do not count toward [sample] count.
INFEASIBLE = "infeasible"  # over the MACs or params budget, or not a valid network
DUPLICATE = "duplicate"  # an architecture sampled before: trained once, not again

OWN = (DIVERGED, OUT_OF_MEMORY, ERROR, NO_RECIPE)
NOT_OWN = (INTERRUPTED, KILLED, STORAGE)
NOT_TRAINED = (INFEASIBLE, DUPLICATE)
KINDS = OWN + NOT_OWN + NOT_TRAINED


def failure_kind(state: Any, user_attrs: dict[str, Any]) -> str | None:
    """The kind of a FAIL trial (None for any other state). Trials stored before kinds were
    recorded are classified from their `failure` text; one without any is a killed run's."""
    if getattr(state, "name", state) != "FAIL":
        return None
    kind = user_attrs.get(FAILURE_KIND)
    if kind in KINDS:
        return kind
    failure = user_attrs.get(FAILURE)
    if failure is None:
        return KILLED
    text = str(failure)
    if text.startswith("diverged"):
        return DIVERGED
    if "out of memory" in text.lower():
        return OUT_OF_MEMORY
    if text.startswith("no search trial"):
        return NO_RECIPE
    return ERROR


def is_own(kind: str | None) -> bool:
    return kind in OWN


def exception_kind(exc: BaseException) -> str:
    """An exception raised by training, as a failure kind."""
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return OUT_OF_MEMORY
    return ERROR


# ---------------------------------------------------------------- did it learn?


def chance_error(classes: int) -> float:
    """The error of guessing: 1 - 1/classes (0.9 for ten classes)."""
    return 1.0 - 1.0 / classes


def _at_chance(error: float | None, examples: int, chance: float) -> float | None:
    """The margin within which `error` counts as chance, or None if it is clearly below chance:
    three standard errors of a guesser on that many examples, and at least two points."""
    if error is None or math.isnan(error) or examples < 1:
        return None
    margin = max(0.02, 3 * math.sqrt(chance * (1 - chance) / examples))
    return margin if error >= chance - margin else None


def did_not_learn(train_error: float | None, train_examples: int, test_error: float | None, test_examples: int,
                  classes: int) -> str | None:
    """Why a run counts as having learned nothing, or None when it learned.

    A run learned nothing when its last epoch's training error and its final test error are both
    at chance level (within three standard errors of a guesser on that many examples, and at
    least two points). Such a run can end with a finite loss (a learning rate so large that
    BatchNorm keeps the loss finite while the weights are lost), and its errors are not a
    measurement of the variant. Both are asked for: the training error of a short run is a
    running average that starts at chance, while the test error is measured after training.
    """
    if classes < 2:
        return None
    chance = chance_error(classes)
    train_margin = _at_chance(train_error, train_examples, chance)
    test_margin = _at_chance(test_error, test_examples, chance)
    if train_margin is None or test_margin is None:
        return None
    return (f"did not learn: training error {100 * train_error:.1f}% and test error {100 * test_error:.1f}% are at "
            f"chance level for {classes} classes ({100 * chance:.1f}%)")


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
    # an architecture search's sample: the network's axes, its cost, and the trial that trained it
    # when it was sampled before (its values given to the sampler again; it is not a unit's result)
    spec: Mapping[str, Any] | None = None
    costs: Mapping[str, float] = field(default_factory=dict)  # "macs", "params"
    duplicate_of: int | None = None


def _real(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def record(number: int, state: str, user_attrs: Mapping[str, Any], params: Mapping[str, Any] | None = None,
           value: float | None = None) -> TrialRecord:
    a = TrialAttrs.read(user_attrs)
    costs = {k: v for k, v in (("macs", _real(a.macs)), ("params", _real(a.params))) if v is not None}
    return TrialRecord(number, state, a.unit, failure_kind(state, user_attrs), dict(params or {}), value,
                       _real(a.val_error), a.spec if isinstance(a.spec, dict) else None, costs,
                       a.duplicate_of if isinstance(a.duplicate_of, int) else None)


def records(trials: Iterable["FrozenTrial"]) -> list[TrialRecord]:
    """Stored trials as records, in trial order. A trial's params include those it was enqueued
    with (Optuna's `fixed_params`), for a trial killed before its objective set any."""
    return [record(t.number, t.state.name, t.user_attrs, {**t.system_attrs.get("fixed_params", {}), **t.params},
                   t.values[0] if t.values else None) for t in trials]


def selection_error(val_error: float | None, test_error: float) -> float:
    """What picks a variant's final recipe among its search trials: the validation error when the
    recipe holds a split out, so the test set never chooses hyperparameters; else the test error."""
    return test_error if val_error is None or math.isnan(val_error) else val_error
