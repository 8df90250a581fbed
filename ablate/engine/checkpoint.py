"""Per-epoch checkpoints that can never lose a unit.

A checkpoint is written atomically (a temporary file beside it, synced, then renamed over it), with
a header that makes damage detectable before anything is unpickled: a magic line, the payload's
length and its SHA-256. Reading one that is truncated, overwritten, foreign (another run's
fingerprint) or otherwise unusable is never an error: it is discarded with one warning naming it,
and the unit trains from scratch. A write that fails (a full disk) removes its temporary file and
raises `CheckpointWriteError`; the previous checkpoint is still in place.

Temporary files are named `<checkpoint>.tmp<pid>-<host>`; one left by a killed process is removed by
the next run on the same host (`remove_stale`), never one whose process is still writing it, and
never one of another host: workers on several machines may share a checkpoint folder
(docs/distributed.md), and a process id means nothing on another machine.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch

from ablate.failpoints import reach

log = logging.getLogger("ablate")

MAGIC = b"ablate checkpoint v1\n"
_HEADER = struct.Struct("<Q32s")  # payload length, SHA-256 of the payload
_ZIP = b"PK\x03\x04"  # a bare torch.save file, as ablate wrote before the header (read, unverified)
TMP = re.compile(r"^(?P<name>.+)\.tmp(?P<pid>\d+)(?:-(?P<host>[A-Za-z0-9_.-]+))?$")
KEYS = ("fingerprint", "epoch", "model", "optimizer", "rng", "history")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space left, no permission, ...)."""

    def __init__(self, path: Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror)
        self.path, self.message = path, f"cannot write checkpoint {path}: {cause.strerror or cause}"

    def __str__(self) -> str:
        return self.message


class BadCheckpoint(Exception):
    """A checkpoint that cannot be used; the message says why."""


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically: a run killed while saving leaves the previous checkpoint."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{host_name()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(MAGIC + _HEADER.pack(len(data), hashlib.sha256(data).digest()))
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            reach("checkpoint-write")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise CheckpointWriteError(path, exc) from exc


def _payload(raw: bytes) -> bytes:
    if raw.startswith(_ZIP):
        return raw
    if not raw.startswith(MAGIC):
        raise BadCheckpoint("not an ablate checkpoint")
    header = raw[len(MAGIC):len(MAGIC) + _HEADER.size]
    if len(header) < _HEADER.size:
        raise BadCheckpoint("truncated header")
    length, digest = _HEADER.unpack(header)
    data = raw[len(MAGIC) + _HEADER.size:]
    if len(data) != length:
        raise BadCheckpoint(f"{len(data)} bytes of data where the header says {length}: truncated or appended to")
    if hashlib.sha256(data).digest() != digest:
        raise BadCheckpoint("checksum mismatch: the file was damaged")
    return data


def _decode(raw: bytes, map_location: Any = None) -> Any:
    return torch.load(io.BytesIO(_payload(raw)), map_location=map_location, weights_only=True)


def read(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """A checkpoint's payload, verified against its checksum (BadCheckpoint otherwise): for tests
    and tools; training uses `load`, which discards what it cannot use."""
    try:
        state = _decode(Path(path).read_bytes(), map_location)
    except BadCheckpoint:
        raise
    except Exception as exc:
        raise BadCheckpoint(f"cannot be loaded ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise BadCheckpoint("not a checkpoint payload")
    return state


def _check(state: Any, fingerprint: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        raise BadCheckpoint("missing entries")
    theirs = state["fingerprint"]
    if theirs != fingerprint:
        differs = [k for k in fingerprint if not isinstance(theirs, dict) or theirs.get(k) != fingerprint[k]]
        raise BadCheckpoint(f"it belongs to another run (its {', '.join(differs) or 'fingerprint'} differs)")
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = state["model"]
    if not isinstance(theirs, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in theirs.items()} != mine:
        raise BadCheckpoint("its weights do not fit the network")
    rng = state["rng"]
    if not isinstance(rng, dict) or not all(isinstance(rng.get(k), torch.Tensor) for k in ("cpu", "data")):
        raise BadCheckpoint("missing random-number-generator states")
    if not isinstance(state["epoch"], int) or not isinstance(state["history"], list) or len(state["history"]) != state["epoch"]:
        raise BadCheckpoint("its history does not match its epoch")
    return state


def load(path: str | Path, fingerprint: dict[str, Any], model: torch.nn.Module, map_location: Any = None) -> dict[str, Any] | None:
    """The checkpoint at `path` if there is one and it belongs to this run (same fingerprint, weights
    that fit `model`); otherwise None. An unusable checkpoint is removed, with one warning."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return discard(path, f"cannot be read: {exc.strerror or exc}")
    try:
        return _check(_decode(raw, map_location), fingerprint, model)
    except BadCheckpoint as exc:
        return discard(path, str(exc))
    except Exception as exc:  # whatever unpickling damaged bytes raises
        return discard(path, f"cannot be loaded ({type(exc).__name__}: {exc})")


def discard(path: Path, reason: str) -> None:
    """Remove an unusable checkpoint, saying so in one line (logger `ablate`)."""
    log.warning("checkpoint %s discarded: %s; the unit trains from scratch", path, reason.splitlines()[0][:300] if reason else "unusable")
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
    return None


def host_name() -> str:
    import socket

    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(directory: str | Path) -> list[Path]:
    """Remove the temporary files of checkpoint writes whose process is gone; returns them."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = TMP.match(p.name)
        if m and m["name"].endswith(".pt") and m["host"] in (None, host_name()) and not _alive(int(m["pid"])):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
