"""Running a study: its units and what to run next, the run loop, workers, and stopping.

    scheduling   units, and what to run next: a pure function of the stored trials
    setup        the Optuna study a study file becomes: params, sampler, pruner, attributes
    runner       the run loop (`Runner`, `run_study`)
    trials       running claimed trials, reaping dead workers' trials
    workers      `ablate run --workers N`
    stopping     SIGINT and SIGTERM at safe points
    status       where a stored study stands
    options      defaults and checks of `ablate run`'s options

Names are imported on first use (PEP 562), so `ablate --help` does not wait for torch and Optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Unit": "scheduling", "study_units": "scheduling", "plan": "scheduling", "unit_state": "scheduling",
    "failed_units": "scheduling",
    "run_study": "runner", "Runner": "runner", "Progress": "runner", "checkpoint_dir_for": "runner", "checkpoint_name": "runner",
    "distributions": "setup", "fixed_params": "setup", "param_keys": "setup", "trial_recipe": "setup",
    "objective_metric": "setup", "create_or_check": "setup", "study_attrs": "setup", "sampler_for": "setup",
    "PerVariantSampler": "setup", "PerVariantPruner": "setup", "same_variant": "setup", "pruner_for": "setup",
    "run_workers": "workers", "placement": "workers", "WorkerError": "workers",
    "study_progress": "status", "running_trials": "status",
    "OptionError": "options", "GRACE_SECONDS": "options", "parse_fuse": "options", "fuse_size": "options",
    "CPU_FUSE": "options", "GPU_FUSE": "options",
    "stopping": None, "scheduling": None,
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ablate.runs' has no attribute {name!r}")
    module = _WHERE[name]
    if module is None:
        return importlib.import_module(f"ablate.runs.{name}")
    return getattr(importlib.import_module(f"ablate.runs.{module}"), name)
