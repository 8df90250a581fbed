"""A study stored by ablate 0.1.0 (commit abf9a9b, before the package was split into subpackages)
still opens, reports, exports and resumes: its killed trial's unit resumes from the epoch
checkpoint that version wrote, and no unit is trained twice. tests/fixtures/v0.1.0/legacy.toml
says how the fixture was made."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ablate.storage import TrialAttrs
from conftest import ablate

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v0.1.0"


def stored(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "v0.1.0"
    shutil.copytree(FIXTURE, folder)
    return folder, f"sqlite:///{folder / 'legacy.db'}"


def test_a_study_stored_by_0_1_0_opens_reports_and_exports(tmp_path):
    folder, url = stored(tmp_path)
    show = ablate("show", "legacy", "--storage", url, cwd=folder)
    assert show.returncode == 0, show.stderr
    assert "plain-8-w4" in show.stdout and "resnet-8-w4" in show.stdout
    report = ablate("report", "legacy", "--storage", url, "--out", str(folder / "r.html"), cwd=folder)
    assert report.returncode == 0, report.stderr
    page = (folder / "r.html").read_text()
    assert "stored by ablate 0.1.0" in page and "plain-8-w4" in page
    export = ablate("export", "legacy", "--storage", url, "--out-dir", str(folder / "tables"), cwd=folder)
    assert export.returncode == 0, export.stderr
    assert (folder / "tables" / "legacy-trials.csv").is_file()


def test_a_study_stored_by_0_1_0_resumes_from_its_checkpoint_and_trains_no_unit_twice(tmp_path):
    folder, url = stored(tmp_path)
    before = optuna.load_study(study_name="legacy", storage=url).get_trials()
    done = {TrialAttrs.read(t.user_attrs).unit for t in before if t.state == TrialState.COMPLETE}
    killed = [TrialAttrs.read(t.user_attrs).unit for t in before if t.state == TrialState.RUNNING]
    assert killed == ["plain-8-w4/final/1"] and (folder / "legacy.db.checkpoints" / "legacy").is_dir()
    run = ablate("run", "legacy.toml", "--storage", url, "--fuse", "off", "--no-report", "--grace-period", "2", cwd=folder)
    assert run.returncode == 0, run.stderr
    after = optuna.load_study(study_name="legacy", storage=url).get_trials()
    complete = [TrialAttrs.read(t.user_attrs) for t in after if t.state == TrialState.COMPLETE]
    units = [a.unit for a in complete]
    assert len(units) == len(set(units)) == 6  # every unit once
    assert done <= set(units)
    resumed = next(a for a in complete if a.unit == "plain-8-w4/final/1")
    assert resumed.resumed_from == 1  # the epoch checkpoint 0.1.0 wrote, not a fresh start
    assert [t.number for t in after[: len(before)]] == [t.number for t in before]  # old trials kept as they were
