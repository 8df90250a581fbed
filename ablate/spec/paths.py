"""Paths the user gives (options, study files, storage URLs): one rule for `~` and relative paths.

`~` means what it means to the shell, the user's home, in every path option and in the database
path of a `sqlite:///` URL alike; a relative path is relative to the working directory. A `~`
that cannot be expanded (no HOME) is an error, never a folder literally named `~`: a stray `~`
in the working directory is a hazard (`rm -rf ~` would delete the user's home).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PathError", "user_path", "usable_dir"]


class PathError(ValueError):
    """A path that cannot be used; the message names the option and the fix."""


def user_path(path: str | os.PathLike[str], option: str = "path") -> Path:
    """`path` with `~` expanded as the shell would; PathError when it cannot be."""
    p = Path(path).expanduser()
    if p.parts and p.parts[0].startswith("~"):
        raise PathError(f"{option}: {os.fspath(path)!r} starts with ~ but the home folder is unknown (HOME is not set); "
                        "give the full path")
    return p


def usable_dir(path: str | os.PathLike[str], option: str, *, create: bool) -> Path:
    """A folder the user named for writing: expanded, created when `create` (else it must exist),
    and writable; PathError naming `option` otherwise."""
    p = user_path(path, option)
    if p.exists() and not p.is_dir():
        raise PathError(f"{option}: {os.fspath(path)} is a file, not a folder; give a folder")
    if not p.exists():
        if not create:
            raise PathError(f"{option}: {os.fspath(path)} does not exist; create it or give another folder")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PathError(f"{option}: cannot create {os.fspath(path)}: {exc.strerror or exc}; give another folder") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise PathError(f"{option}: {os.fspath(path)} is not writable (a read-only folder or mount); give another folder")
    return p
