"""The training engine: data on the device, the parametric ResNet family, training, checkpoints.
Imports no Optuna: it trains what it is given and reports each epoch through a callback.

    data        datasets as uint8 tensors on the device, batches, augmentation on whole batches
    bundled     the Fashion-MNIST subset that ships with ablate
    owndata     your own data decoded once (in parallel) and cached in the data dir
    imagesets   Imagenette's JPEG folders (decoded by owndata) and STL-10's binaries
    models      `build_model(spec, info, runs=K)`: one builder for every variant, fused or not
    train       `train`, `train_runs`: one run, or K runs fused into one network
    checkpoint  atomic, checksummed epoch checkpoints
    diagnostics why deep plain nets fail: gradients, signal propagation and shattered gradients at
                initialisation; the block lesion and the loss landscape after training
    bench       the engine's throughput against a seed-style DataLoader baseline

Names are imported on first use (PEP 562), so `ablate --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DataError": "data", "Split": "data", "Splits": "data", "load_dataset": "data",
    "read_own": "owndata", "OwnDataReadError": "owndata",
    "build_model": "models", "measure": "models", "count_params": "models", "count_macs": "models",
    "train": "train", "train_runs": "train", "load_data": "train", "Epoch": "train", "Result": "train",
    "resolve_device": "train", "Precision": "train",
    "run_bench": "bench", "run_fuse_bench": "bench",
    "at_init": "diagnostics", "after_training": "diagnostics",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ablate.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ablate.engine.{_WHERE[name]}"), name)
