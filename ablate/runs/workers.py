"""`ablate run --workers N`: N worker processes on this machine for one study.

Each worker is the same `ablate run` command (with `--no-report`), so it does exactly what a
worker on another machine does: the storage alone coordinates them (ablate.storage.claim), and
this parent only starts them, places them on devices and shows their combined progress.

Placement: with CUDA, worker i sees one GPU (CUDA_VISIBLE_DEVICES), the visible ones in turn;
more workers than GPUs pack several on each (small nets do not fill an H100). On the CPU each
worker gets cores // N threads (at least 1), so N workers do not fight over every core.

Ctrl-C or SIGTERM reaches the parent; it passes one signal to each worker (they run in their own
sessions, so a terminal's Ctrl-C does not reach them twice), each stops at its next safe point
and marks its trial for retry, and the next run resumes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from ablate.runs import stopping
from ablate.runs.options import GRACE_SECONDS
from ablate.spec.study import Study


class WorkerError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def placement(workers: int, device: str, cores: int | None = None) -> list[tuple[dict[str, str], int | None]]:
    """Each worker's environment additions and CPU threads: a GPU of its own (in turn over the
    visible ones), or, on the CPU, its share of the cores."""
    gpus: list[str] = []
    if device == "auto" or device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible else [str(i) for i in range(torch.cuda.device_count())]
    if gpus:
        return [({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}, None) for i in range(workers)]
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)
    return [({"OMP_NUM_THREADS": str(threads)}, threads) for _ in range(workers)]


def _worker_args(forward: list[str]) -> list[str]:
    """The parent's own `run` arguments without --workers (and its value), with --no-report."""
    out, skip = [], False
    for a in forward:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        out.append(a)
    return [*out, "--no-report"]


def run_workers(study: Study, study_path: Path, storage: str, workers: int, *, device: str, threads: int | None,
                forward: list[str], console: Console) -> int:
    """Start the workers, show their progress until all end; returns the exit status (0: all
    ended well). The study is created (or checked) first, so a bad storage or a changed study
    file is one error here, not N."""
    import optuna

    from ablate import storage as S
    from ablate.runs.setup import create_or_check

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        storage_obj = S.open_storage(storage, grace=GRACE_SECONDS)
        create_or_check(study, storage_obj)
    except S.StorageError as exc:
        raise WorkerError(str(exc)) from None
    args = _worker_args(forward)
    envs = placement(workers, device)
    procs: list[subprocess.Popen[str]] = []
    lock = threading.Lock()

    def relay(i: int, stream: Any) -> None:
        for line in stream:
            with lock:
                console.print(Text(f"[worker {i}] ", style="dim") + Text(line.rstrip("\n")), highlight=False, soft_wrap=True)

    for i, (extra, share) in enumerate(envs):
        env = {**os.environ, **extra}
        argv = [sys.executable, "-m", "ablate", *args]
        if threads is None and share is not None:
            argv += ["--threads", str(share)]
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # signals come from us, once
        procs.append(p)
        threading.Thread(target=relay, args=(i, p.stderr), daemon=True).start()
    where = ", ".join(f"GPU {e['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in e else f"{threads or share} CPU threads"
                      for e, share in envs)
    console.print(f"{workers} workers on {study.name} ({where})", highlight=False, soft_wrap=True)
    # Its polls skip a storage that is away (`_progress_line`), and the workers say so: no retries here.
    reader = S.open_storage(storage, retry=0)
    last = ""
    with stopping.handled():
        try:
            while any(p.poll() is None for p in procs):
                line = _progress_line(reader, study.name)
                if line and line != last:
                    with lock:
                        console.print(line, highlight=False, soft_wrap=True)
                    last = line
                for _ in range(20):
                    if all(p.poll() is not None for p in procs):
                        break
                    time.sleep(0.25)
                    stopping.check()
        except stopping.Stop as stop:
            sig = signal.SIGINT if stop.code == 128 + signal.SIGINT else signal.SIGTERM
            for p in procs:
                if p.poll() is None:
                    p.send_signal(sig)
            for p in procs:
                p.wait()
            raise WorkerError(f"{stop.reason}; the workers stopped at a safe point; every finished trial is stored, trials "
                              "in progress keep their checkpoints; run the same command again to resume", code=stop.code) from None
    codes = [p.wait() for p in procs]
    time.sleep(0.1)  # the relays print the workers' last lines
    bad = [c for c in codes if c != 0]
    if bad:
        return 1 if all(c == 1 for c in bad) else max(abs(c) for c in bad)
    return 0


def _progress_line(storage: Any, name: str) -> str:
    """"units 5/16 done, 3 running (host:pid cuda:0 epoch 2, ...)": the study's progress from the storage."""
    import optuna

    import sqlalchemy

    from ablate.runs.status import running_trials, study_progress

    try:
        ostudy = optuna.load_study(study_name=name, storage=storage)
        p = study_progress(ostudy)
        running = running_trials(ostudy)
    except (KeyError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
        return ""  # not created yet (KeyError), or a busy moment: the next poll
    who = ", ".join(f"{r['unit']} on {r['worker']}" for r in running if r["worker"] is not None)
    return f"units {p['done']}/{p['units']} done, {p['running']} running" + (f": {who}" if who else "")
