"""Trained studies shared by the test modules: each is trained once per session, never twice.

- `quick_run`: the README's main job, `ablate run studies/quick.toml`, as on a fresh offline
  machine: in a subprocess with an empty home directory and, where the tests run as root with
  `unshare`, without network and with a tmpfs over /usr/share/datasets, so that Debian's
  Fashion-MNIST is hidden and the run has only the subset bundled with ablate.
- `small_run`: a small study with a hyperparameter search, run by `ablate run` on the full
  Fashion-MNIST files (Debian's `dataset-fashion-mnist`).

The driver, report and CLI tests read what these runs stored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ablate.engine.data import FASHION_MNIST_SYSTEM_DIR

ROOT = Path(__file__).resolve().parents[1]
QUICK_STUDY = ROOT / "studies" / "quick.toml"
SYSTEM_DATASETS = FASHION_MNIST_SYSTEM_DIR.parent  # /usr/share/datasets, hidden from the quick run

SMALL_STUDY = Path(__file__).resolve().parent / "studies" / "small.toml"


@dataclass(frozen=True)
class Run:
    """One `ablate run` in its own folder (its working directory): ./ablate.db, ./reports/."""

    folder: Path
    study: str
    result: subprocess.CompletedProcess[str]
    not_hidden: str | None = None  # why Debian's data could not be hidden (None: it was, or there is none)

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.folder / 'ablate.db'}"

    @property
    def report(self) -> Path:
        return self.folder / "reports" / f"{self.study}.html"


def ablate(*args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None,
           prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`ablate ARGS` in a subprocess, as a user runs it."""
    return subprocess.run([*prefix, sys.executable, "-m", "ablate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def offline_prefix() -> tuple[tuple[str, ...], str | None]:
    """A command prefix that runs its command without network and with /usr/share/datasets empty
    (a private mount namespace: nothing changes outside it), and why not, when that is impossible."""
    if not SYSTEM_DATASETS.is_dir():
        return (), None  # nothing to hide: this machine is already without Debian's data
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return (), "hiding /usr/share/datasets needs root and unshare (util-linux)"
    hide = f"mount -t tmpfs none {SYSTEM_DATASETS}"
    probe = subprocess.run(["unshare", "-mn", "sh", "-c", hide], capture_output=True, text=True)
    if probe.returncode != 0:
        return (), f"unshare -mn cannot mount a tmpfs here: {probe.stderr.strip()}"
    return ("unshare", "-mn", "sh", "-c", f'{hide} && exec "$@"', "sh"), None


def fresh_home_env(home: Path) -> dict[str, str]:
    """This environment with an empty home directory and no data dir or cache settings of the user's."""
    env = {k: v for k, v in os.environ.items() if k != "ABLATE_DATA" and not k.startswith("XDG_")}
    env["HOME"] = str(home)
    return env


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Run:
    folder = tmp_path_factory.mktemp("quick")
    home = folder / "home"
    home.mkdir()
    prefix, not_hidden = offline_prefix()
    result = ablate("run", str(QUICK_STUDY), "--device", "cpu", cwd=folder, timeout=1500, env=fresh_home_env(home), prefix=prefix)
    return Run(folder=folder, study="quick", result=result, not_hidden=not_hidden)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Run:
    if not FASHION_MNIST_SYSTEM_DIR.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (the full files)")
    folder = tmp_path_factory.mktemp("small")
    result = ablate("run", str(SMALL_STUDY), "--device", "cpu", cwd=folder)  # default storage: ./ablate.db
    return Run(folder=folder, study="small", result=result)


# ---------------------------------------------------------------- a real PostgreSQL server

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL 15 cluster (Debian's `postgresql` package): `initdb` as the
    `postgres` user in a temporary folder, listening on 127.0.0.1 only at a free port, with a
    database `ablate`; stopped and removed at the end. Yields its URL (with a password, which
    trust authentication ignores, so that hiding it can be checked)."""
    import socket
    import tempfile

    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip(f"needs PostgreSQL 15 server binaries in {PG_BIN} (apt-get install postgresql) and runuser")
    if os.geteuid() != 0:
        pytest.skip("starting a PostgreSQL cluster as the postgres user needs root (runuser)")
    folder = Path(tempfile.mkdtemp(prefix="ablate-pg-"))
    data = folder / "data"
    shutil.chown(folder, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_postgres(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, timeout=120)

    done = as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    assert done.returncode == 0, done.stderr
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=200"
    done = as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "start")
    assert done.returncode == 0, done.stderr + (folder / "log").read_text()
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as con:
            con.execute("CREATE DATABASE ablate")
        yield f"postgresql+psycopg://postgres:s3cret@127.0.0.1:{port}/ablate"
    finally:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
