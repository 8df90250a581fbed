"""One study on a real PostgreSQL server (tests/conftest.py starts a throwaway cluster): three
workers at once, one SIGKILLed in the middle of a trial, its unit finished by another worker
from the shared checkpoint folder, every unit complete exactly once; then `ls`, `show`, `report`,
`export` and the dashboard read it. Skipped, saying why, where the server binaries are absent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState
from test_driver import dashboard
from test_workers import TINY, is_stopped

from ablate import failpoints
from ablate.storage import outcomes
from ablate.runs.scheduling import study_units
from ablate.storage import TrialAttrs, open_storage
from ablate.spec.study import parse_study


def test_three_workers_on_postgresql_one_killed_mid_trial(tmp_path, postgres_url):
    path = tmp_path / "many.toml"
    path.write_text(TINY.format(seeds=3, epochs=3, images=1024))
    shared = tmp_path / "checkpoints"  # where every worker (every machine) can read them
    argv = [sys.executable, "-m", "ablate", "run", str(path), "--storage", postgres_url, "--device", "cpu", "--threads", "1",
            "--grace-period", "3", "--checkpoint-dir", str(shared), "--no-report",
            "--fuse", "off"]  # one unit a worker, so the failpoint below stops worker 0 inside exactly one trial
    # Worker 0 stops itself while writing its second checkpoint: mid-trial, its epoch-1 checkpoint in place.
    procs = [subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**__import__("os").environ, **({failpoints.ENV: "checkpoint-write:2"} if i == 0 else {})})
             for i in range(3)]
    deadline = time.time() + 300
    while not is_stopped(procs[0].pid):
        assert procs[0].poll() is None, procs[0].communicate()[1]
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    procs[0].send_signal(signal.SIGKILL)
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode in (0, -signal.SIGKILL), err
        assert "Traceback" not in err, err

    trials = optuna.load_study(study_name="many", storage=postgres_url).get_trials()
    units = sorted(u.key for u in study_units(parse_study(path.read_text())))
    complete = Counter(TrialAttrs.read(t.user_attrs).unit for t in trials if t.state == TrialState.COMPLETE)
    assert sorted(complete) == units and set(complete.values()) == {1}
    (killed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert outcomes.failure_kind(killed.state, killed.user_attrs) == outcomes.KILLED
    a = TrialAttrs.read(killed.user_attrs)
    assert a.worker.pid == procs[0].pid
    retry = next(t for t in trials if t.state == TrialState.COMPLETE and TrialAttrs.read(t.user_attrs).unit == a.unit)
    r = TrialAttrs.read(retry.user_attrs)
    assert r.worker.pid != procs[0].pid and r.resumed_from >= 1  # another worker, from the killed one's checkpoint
    assert [h["epoch"] for h in r.history] == [1, 2, 3]

    def ablate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ablate", *args, "--storage", postgres_url], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    listing = ablate("ls")
    assert listing.returncode == 0, listing.stderr
    assert "many" in listing.stdout and "6/6" in listing.stdout and "s3cret" not in listing.stdout
    shown = ablate("show", "many")
    assert shown.returncode == 0 and "resnet-8-w4" in shown.stdout, shown.stderr
    report = ablate("report", "many", "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "r.html").read_text()
    assert "postgresql+psycopg://postgres:***@127.0.0.1" in page and "s3cret" not in page
    exported = ablate("export", "many", "--out-dir", str(tmp_path / "tables"))
    assert exported.returncode == 0 and (tmp_path / "tables" / "many-trials.csv").read_text().count("COMPLETE") == 6

    with dashboard(postgres_url, tmp_path) as (_, payload):
        assert [s["study_name"] for s in payload["study_summaries"]] == ["many"]


def test_a_bad_postgresql_url_is_one_clear_error(postgres_url):
    from ablate.storage import StorageError

    wrong = postgres_url.rsplit("/", 1)[0] + "/nosuchdb"
    with pytest.raises(StorageError, match=r"cannot open postgresql\+psycopg://postgres:\*\*\*@.*nosuchdb.*does not exist"):
        open_storage(wrong)
