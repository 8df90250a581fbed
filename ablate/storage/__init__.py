"""The storage contract: what ablate keeps in an Optuna RDB storage (docs/storage.md), and the only
code that touches Optuna's private API (`ablate.storage.rdb`).

    contract   key names and encodings: trial params, TrialAttrs, StudyAttrs, Worker
    outcomes   how a trial ended (failure kinds, did-not-learn) and trials as plain records
    rdb        opening a storage, claiming a unit exactly once, heartbeats
    retry      transient errors (a lost connection, a restart, a lock) retried for a bounded time
"""

from ablate.storage import outcomes
from ablate.storage.contract import *  # noqa: F401,F403
from ablate.storage.contract import __all__ as _contract
from ablate.storage.outcomes import TrialRecord, record, records, selection_error
from ablate.storage.rdb import *  # noqa: F401,F403
from ablate.storage.rdb import __all__ as _rdb

__all__ = ["outcomes", *_contract, "TrialRecord", "record", "records", "selection_error", *_rdb]
