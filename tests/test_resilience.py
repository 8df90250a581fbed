"""Nothing lost, no traceback (issue 10): random SIGKILLs at exact moments, SIGTERM, a full disk,
damaged checkpoints, units that fail for their own reasons or learn nothing, broken storage.

Everything is real: `ablate run` processes killed with real signals, SQLite files, a tmpfs that
fills up, the `synthetic` dataset (generated in memory, so no download and no data files).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

import ablate.runs as driver
from ablate.storage import open_storage
from ablate.engine import checkpoint
from ablate import failpoints
from ablate.storage import outcomes
from ablate.cli import app
from ablate.spec.study import parse_study
from ablate.analysis import failures, trials_table, variant_summary
from ablate.engine.train import load_data, train

TINY = """
name = "{name}"
dataset = "synthetic"
[fixed]
width = 4
depth = 8
[grid]
connection = [{connections}]
[train]
epochs = {epochs}
batch_size = 128
lr = {lr}
train_subset = 512
augment = []
[seeds]
count = {seeds}
"""


def tiny(name: str, connections: str = '"plain", "residual"', epochs: int = 2, lr: float = 0.05, seeds: int = 1, extra: str = "") -> str:
    return TINY.format(name=name, connections=connections, epochs=epochs, lr=lr, seeds=seeds) + extra


def load(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials()


def cli(*args: str) -> object:
    """`ablate ...` in this process: a real run, a real storage, real files; no start-up cost."""
    return CliRunner().invoke(app, list(args))


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ---------------------------------------------------------------- checkpoints and retries, in this process


def test_an_interrupted_unit_with_a_damaged_checkpoint_is_retried_from_scratch(tmp_path, caplog):
    """The issue's reproduction: interrupt a unit after its first epoch checkpoint, overwrite the
    checkpoint with random bytes, run again. The unit is retried, warns once, trains from scratch."""
    study = parse_study(tiny("damaged", connections='"plain"', epochs=2))
    url = f"sqlite:///{tmp_path / 'd.db'}"

    def interrupt(unit, epoch):
        raise KeyboardInterrupt  # what Ctrl-C is without ablate's handler: the trial is failed, not its fault

    with pytest.raises(KeyboardInterrupt):
        driver.run_study(study, url, device="cpu", progress=driver.Progress(on_epoch=interrupt))
    (ckpt,) = (tmp_path / "d.db.checkpoints" / "damaged").glob("*.pt")
    ckpt.write_bytes(random.Random(0).randbytes(ckpt.stat().st_size))
    with caplog.at_level("WARNING", logger="ablate"):
        driver.run_study(study, url, device="cpu")
    assert [r.getMessage() for r in caplog.records if r.name == "ablate"] == [f"checkpoint {ckpt} discarded: not an ablate checkpoint; the unit trains from scratch"]
    trials = load(tmp_path / "d.db", "damaged")
    assert [(t.state, outcomes.failure_kind(t.state, t.user_attrs)) for t in trials] == [(TrialState.FAIL, outcomes.KILLED), (TrialState.COMPLETE, None)]
    assert trials[1].user_attrs["resumed_from"] == 0 and [h["epoch"] for h in trials[1].user_attrs["history"]] == [1, 2]
    assert not list((tmp_path / "d.db.checkpoints" / "damaged").iterdir())


def test_own_failures_stay_failed_unless_asked_and_the_run_says_so(tmp_path, monkeypatch):
    """A unit that diverges is a result: kept, not retried, and `ablate run` exits 1 saying how many
    units failed and why. `--retry-failed` runs each such unit once more, not in a loop."""
    monkeypatch.chdir(tmp_path)
    # At the bounds of lr and weight decay, with heavy momentum, over 32 steps: the loss overflows.
    diverging = tiny("diverges", connections='"plain"', epochs=1, lr=10.0).replace("batch_size = 128", "batch_size = 16")
    Path("s.toml").write_text(diverging.replace("augment = []", "augment = []\nweight_decay = 1\nmomentum = 0.99\nschedule = \"constant\""))
    first = cli("run", "s.toml", "--device", "cpu", "--storage", "sqlite:///d.db")
    assert first.exit_code == 1
    assert one_error_line(first.stderr) == ("error: 1 of 1 units failed (1 diverged); their reasons are in the report's failures section; "
                                           "run again with --retry-failed to retry them")
    assert Path("reports/diverges.html").exists()  # the report is written all the same
    again = cli("run", "s.toml", "--device", "cpu", "--storage", "sqlite:///d.db")
    assert again.exit_code == 1 and len(load(Path("d.db"), "diverges")) == 1  # nothing retried
    retried = cli("run", "s.toml", "--device", "cpu", "--storage", "sqlite:///d.db", "--retry-failed")
    assert retried.exit_code == 1
    trials = load(Path("d.db"), "diverges")
    assert [outcomes.failure_kind(t.state, t.user_attrs) for t in trials] == [outcomes.DIVERGED, outcomes.DIVERGED]


def test_a_run_that_learns_nothing_is_flagged_and_kept_out_of_the_means(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("s.toml").write_text(tiny("flat", epochs=1, lr=1e-9, seeds=2, connections='"plain"'))
    result = cli("run", "s.toml", "--device", "cpu", "--storage", "sqlite:///d.db")
    assert result.exit_code == 0, result.output  # a result, not a failure
    assert "note: 2 final runs did not learn (training error at chance level)" in result.stderr
    trials = load(Path("d.db"), "flat")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.user_attrs[outcomes.DID_NOT_LEARN].startswith("did not learn: training error")
        assert "at chance level for 10 classes (90.0%)" in t.user_attrs[outcomes.DID_NOT_LEARN]
    study = optuna.load_study(study_name="flat", storage="sqlite:///d.db")
    table = trials_table(study)
    summary = variant_summary(table, study.user_attrs["variants"])
    assert summary.loc[0, "seeds"] == 0 and summary.loc[0, "did_not_learn"] == 2  # out of the means
    listed = failures(table)
    assert len(listed) == 2 and listed["did_not_learn"].str.startswith("did not learn").all()
    page = Path("reports/flat.html").read_text()
    assert "did not learn: training error" in page and "kept out of the means" in page


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_taken_but_never_beaten_is_retried(tmp_path):
    """Optuna only finds stale trials that sent a heartbeat: a process killed between taking a
    trial and its first beat would leave it RUNNING for ever. The driver fails it after the grace
    period and retries the unit."""
    study = parse_study(tiny("unbeaten", epochs=1))
    url = f"sqlite:///{tmp_path / 'u.db'}"
    storage = open_storage(url, grace=2)
    ostudy = driver.create_or_check(study, storage)
    unit = driver.study_units(study)[1]  # resnet-8-w4/final/0
    ostudy.enqueue_trial(driver.fixed_params(study, unit), user_attrs={"unit": unit.key, "variant": unit.variant.name,
                                                                      "kind": unit.kind, "index": unit.index, "seed": unit.seed})
    taken = ostudy.ask()  # RUNNING, no heartbeat: then the process "dies"
    assert load(tmp_path / "u.db", "unbeaten")[0].state == TrialState.RUNNING
    time.sleep(2.5)  # the grace period passes (a wait for the condition, not a timing assertion)
    driver.run_study(study, url, device="cpu", grace=2)
    trials = load(tmp_path / "u.db", "unbeaten")
    assert [(t.number, t.state) for t in trials] == [(taken.number, TrialState.FAIL), (1, TrialState.COMPLETE), (2, TrialState.COMPLETE)]
    retried = trials[2]  # with the params it was enqueued with, though it never had any of its own
    assert retried.user_attrs["unit"] == unit.key and retried.params == {**driver.fixed_params(study, unit), **retried.params}
    assert retried.params["connection"] == "residual" and set(retried.params) == set(driver.distributions(study))


def test_storage_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("garbage.db").write_bytes(random.Random(2).randbytes(4096))
    for args in (["report", "x"], ["show", "x"], ["export", "x"], ["ls"]):
        result = cli(*args, "--storage", "sqlite:///garbage.db")
        assert result.exit_code == 2, (args, result.output)
        line = one_error_line(result.stderr)
        assert result.stderr == line + "\n" and "[SQL" not in line and "http" not in line and "file is not a database" in line


# ---------------------------------------------------------------- SIGTERM, as clusters preempt


def running_with_epochs(db: Path) -> bool:
    if not db.exists():  # (connecting would create it)
        return False
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            return con.execute("SELECT COUNT(*) FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                               "WHERE t.state = 'RUNNING'").fetchone()[0] > 0
    except sqlite3.OperationalError:  # no file or no tables yet
        return False


def run_args(study_file: Path, db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ablate", "run", str(study_file), "--storage", f"sqlite:///{db}", "--device", "cpu", *extra]


def test_signals_are_held_while_a_trial_trains_and_raised_at_the_next_safe_point():
    """Real signals to this process: outside a trial they stop at once; inside (`deferred`) at the
    next `check()`, unless a second one comes; the handlers are restored after."""
    from ablate.runs import stopping

    before = signal.getsignal(signal.SIGTERM)
    with stopping.handled():
        with pytest.raises(stopping.Stop) as at_once:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # (interrupted by the signal)
        assert (at_once.value.code, at_once.value.kind, at_once.value.reason) == (130, outcomes.INTERRUPTED, "interrupted by SIGINT")
        with stopping.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            noted = True  # still running here: the signal was only noted
            with pytest.raises(stopping.Stop) as held:
                stopping.check()
            assert noted and held.value.code == 143 and held.value.reason == "interrupted by SIGTERM"
            stopping.check()  # raised once only
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(stopping.Stop):
                os.kill(os.getpid(), signal.SIGTERM)  # a second signal does not wait
                time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_stops_at_a_safe_point_keeps_the_checkpoint_and_the_rerun_resumes(tmp_path):
    study_file = tmp_path / "s.toml"
    study_file.write_text(tiny("preempted", epochs=2, connections='"plain"'))
    db = tmp_path / "p.db"
    # A long grace period: the rerun must not need the heartbeat to find the stopped trial.
    proc = subprocess.Popen(run_args(study_file, db, "--grace-period", "3600"), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not running_with_epochs(db):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM
    assert one_error_line(err) == ("error: interrupted by SIGTERM; every finished trial is stored, a trial in progress keeps its "
                                   "checkpoint and is retried first; run the same command again to resume where it stopped")
    (stopped,) = load(db, "preempted")
    assert stopped.state == TrialState.FAIL and stopped.user_attrs[outcomes.FAILURE_KIND] == outcomes.INTERRUPTED
    assert stopped.user_attrs[outcomes.FAILURE].startswith("interrupted by SIGTERM after ")
    (ckpt,) = (tmp_path / "p.db.checkpoints" / "preempted").glob("*.pt")
    done = checkpoint.read(ckpt)["epoch"]
    assert done >= 1

    rerun = subprocess.run(run_args(study_file, db, "--grace-period", "3600"), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    first, retry = load(db, "preempted")
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from"] == done
    assert retry.params == first.params and [h["epoch"] for h in retry.user_attrs["history"]] == [1, 2]
    assert not list(ckpt.parent.iterdir())


# ---------------------------------------------------------------- a full disk


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "none", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}); the disk-full test needs one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of `folder`, leaving about `leave` bytes."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    filler = folder / "filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/proc/mounts").exists(), reason="mounting a tmpfs needs root on Linux")
def test_a_full_disk_is_one_line_the_database_stays_and_the_rerun_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("s.toml").write_text(tiny("full", epochs=2, connections='"plain"'))
    db = tmp_path / "f.db"
    with tmpfs(tmp_path / "small", "16m") as small:  # a report (plotly.js inlined) is about 5 MB
        ckpts = small / "ckpt"
        ckpts.mkdir()
        filler = fill(small, leave=4096)  # less than one checkpoint (about 46 KB)
        result = cli("run", "s.toml", "--device", "cpu", "--storage", f"sqlite:///{db}", "--checkpoint-dir", str(ckpts))
        assert result.exit_code == 1
        line = one_error_line(result.stderr)
        assert line.startswith(f"error: cannot write checkpoint {ckpts / 'full'}/") and "No space left on device" in line
        assert line.endswith("free space (or give --checkpoint-dir) and run the same command again: the run resumes from the last checkpoint")
        assert not list((ckpts / "full").iterdir())  # no half-written temporary file
        with contextlib.closing(sqlite3.connect(db)) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (trial,) = load(db, "full")
        assert trial.state == TrialState.FAIL and trial.user_attrs[outcomes.FAILURE_KIND] == outcomes.STORAGE

        filler.unlink()  # space is back
        assert cli("run", "s.toml", "--device", "cpu", "--storage", f"sqlite:///{db}", "--checkpoint-dir", str(ckpts)).exit_code == 0
        assert [t.state for t in load(db, "full")] == [TrialState.FAIL, TrialState.COMPLETE]

        # The report: a full disk leaves no half page and says so in one line.
        filler = fill(small, leave=4096)
        out = small / "report.html"
        result = cli("report", "full", "--storage", f"sqlite:///{db}", "--out", str(out))
        assert result.exit_code == 1
        assert one_error_line(result.stderr).startswith("error: cannot write the report: No space left on device")
        assert not out.exists() and not out.with_name("report.html.tmp").exists()
        filler.unlink()
        assert cli("report", "full", "--storage", f"sqlite:///{db}", "--out", str(out)).exit_code == 0 and out.stat().st_size > 0


# ---------------------------------------------------------------- random kills


CHAOS_UNITS = 6  # 3 variants x 2 seeds


def chaos_study(tmp_path: Path) -> Path:
    path = tmp_path / "chaos.toml"
    path.write_text(tiny("chaos", connections='"plain", "residual"', epochs=2, seeds=2).replace("depth = 8\n", "").replace(
        "[train]", "[[variant]]\ndepth = 14\nconnection = \"residual\"\n[train]").replace("[grid]", "[grid]\ndepth = [8]"))
    return path


def is_stopped(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    return False


def query(db: Path, sql: str, *args: object) -> object:
    if not db.exists():  # (connecting would create it)
        return None
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            return con.execute(sql, args).fetchone()[0]
    except sqlite3.OperationalError:  # no tables yet
        return None


def last_trial(db: Path) -> int:
    return query(db, "SELECT MAX(trial_id) FROM trials") or 0


def running(db: Path, after: int) -> bool:
    return bool(query(db, "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING' AND trial_id > ?", after))


@pytest.mark.slow
def test_random_kills_lose_nothing(tmp_path):
    """A seeded harness SIGKILLs `ablate run` over a tiny study at random moments: while training
    (a random delay after a trial starts), and exactly in the middle of a checkpoint write, right
    after a trial is recorded (before its checkpoint is removed) and while the report is written
    (failpoints: the process stops itself there, and the harness kills it). After each kill the
    same command runs again. At the end every unit is complete exactly once, nothing is left
    running or on disk, and every result equals an uninterrupted run's."""
    rng = random.Random(10)
    study_file = chaos_study(tmp_path)
    db = tmp_path / "chaos.db"
    # One run at a time: a fused group's numbers differ from an unfused run's in the last bits
    # (grouped kernels), and the check below is exact. Fused groups under kills: test_workers.py.
    args = run_args(study_file, db, "--grace-period", "2", "--fuse", "off")
    plan = ["timer"] * 3 + ["checkpoint-write"] * 3 + ["trial-complete"] * 3 + rng.choices(["timer", "checkpoint-write"], k=1)
    rng.shuffle(plan)
    plan += ["report-write"]
    kills: list[str] = []
    for moment in plan:
        env = dict(os.environ)
        if moment != "timer":
            env[failpoints.ENV] = f"{moment}:{rng.randint(1, 2) if moment == 'checkpoint-write' else 1}"
        newest = last_trial(db)
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if moment == "timer":  # a random moment after this process starts a trial of its own
            while not running(db, after=newest) and proc.poll() is None:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))  # mostly within the trial's first epoch, wherever that is
        else:
            while not is_stopped(proc.pid) and proc.poll() is None:
                time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(moment)
        _, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
        assert "Traceback" not in err.decode()
    assert len(kills) >= 10 and set(kills) == {"timer", "checkpoint-write", "trial-complete", "report-write"}, kills

    final = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    trials = load(db, "chaos")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["unit"] for t in complete) == sorted(u.key for u in driver.study_units(parse_study(study_file.read_text())))
    assert len(complete) == CHAOS_UNITS  # each unit exactly once
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert all(outcomes.failure_kind(t.state, t.user_attrs) in outcomes.NOT_OWN for t in trials if t.state == TrialState.FAIL)
    assert not [p for p in (tmp_path / "chaos.db.checkpoints").rglob("*") if p.is_file()]  # no checkpoint, no temporary file
    assert (tmp_path / "reports" / "chaos.html").stat().st_size > 0 and not list((tmp_path / "reports").glob("*.tmp"))
    assert any(t.user_attrs["resumed_from"] > 0 for t in complete)  # killed units resumed from their checkpoints

    # Nothing lost: every unit's results equal those of one uninterrupted training (the CPU is deterministic).
    study = parse_study(study_file.read_text())
    data = load_data(study.dataset, study.recipe)
    variants = {v.name: v for v in study.variants}
    for t in complete:
        fresh = train(variants[t.user_attrs["variant"]], study.recipe, data, seed=t.user_attrs["seed"])
        assert [(h["epoch"], h["train_loss"], h["train_error"], h["test_error"]) for h in t.user_attrs["history"]] == [
            (e.epoch, e.train_loss, e.train_error, e.test_error) for e in fresh.history], t.user_attrs["unit"]
