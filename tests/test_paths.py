"""Paths and storage URLs as a user types them (issue: faults and paths): one rule for `~`, and a
path that cannot be used is one line naming the option, never a stray folder named `~`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ablate.analysis.format import human
from ablate.spec.paths import PathError, usable_dir, user_path
from ablate.runs.runner import checkpoint_dir_for
from ablate.storage import in_memory, sqlite_path, storage_url
from conftest import ablate

TINY = """
name = "tiny"
dataset = "synthetic"
[fixed]
width = 4
depth = 8
[grid]
connection = ["plain"]
[train]
epochs = 1
batch_size = 64
train_subset = 128
"""


def env_with_home(home: Path | str) -> dict[str, str]:
    return {**os.environ, "HOME": str(home)}


def test_tilde_is_the_home_folder_in_every_path_and_sqlite_url(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_path("~/a") == tmp_path / "home" / "a"
    assert sqlite_path("sqlite:///~/h.db") == tmp_path / "home" / "h.db"
    assert storage_url("sqlite:///~/h.db") == f"sqlite:///{tmp_path / 'home' / 'h.db'}"
    assert checkpoint_dir_for("sqlite:///~/h.db") == tmp_path / "home" / "h.db.checkpoints"
    assert sqlite_path("sqlite:///rel/h.db") == Path("rel/h.db")
    assert sqlite_path("postgresql+psycopg://u@h/db") is None and sqlite_path("sqlite://") is None
    assert in_memory("sqlite://") and in_memory("sqlite:///:memory:") and not in_memory("sqlite:///a.db")


def test_a_tilde_without_a_home_is_an_error_not_a_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(Path, "expanduser", lambda self: self)  # as on a machine whose user has no home
    with pytest.raises(PathError, match="HOME is not set"):
        user_path("~/ck", "--checkpoint-dir")


def test_usable_dir_names_the_option_and_the_problem(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PathError, match="--out-dir: .* is a file, not a folder"):
        usable_dir(f, "--out-dir", create=True)
    with pytest.raises(PathError, match="does not exist"):
        usable_dir(tmp_path / "missing", "--checkpoint-dir", create=False)
    assert usable_dir(tmp_path / "new" / "dir", "--out-dir", create=True).is_dir()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions
            pytest.skip("running as a user that may write anywhere")
        with pytest.raises(PathError, match="not writable"):
            usable_dir(ro, "--out-dir", create=True)
    finally:
        ro.chmod(0o755)


def test_run_report_and_export_expand_tilde_and_never_make_a_folder_named_tilde(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "tiny.toml").write_text(TINY)
    env = env_with_home(home)
    run = ablate("run", "tiny.toml", "--storage", "sqlite:///~/h.db", "--checkpoint-dir", "~/ck", "--no-report", cwd=work, env=env)
    assert run.returncode == 0, run.stderr
    assert (home / "h.db").is_file() and (home / "ck").is_dir()
    report = ablate("report", "tiny", "--storage", "sqlite:///~/h.db", "--out", "~/r.html", cwd=work, env=env)
    assert report.returncode == 0, report.stderr
    assert (home / "r.html").is_file()
    export = ablate("export", "tiny", "--storage", "sqlite:///~/h.db", "--out-dir", "~/exp", cwd=work, env=env)
    assert export.returncode == 0, export.stderr
    assert (home / "exp" / "tiny-trials.csv").is_file()
    assert not (work / "~").exists()
    # Paths that cannot be used: one line each, naming the option.
    (work / "afile").write_text("x")
    for args, option in ((("report", "tiny", "--out", str(work)), "--out"),
                         (("export", "tiny", "--out-dir", "afile"), "--out-dir")):
        r = ablate(*args, "--storage", "sqlite:///~/h.db", cwd=work, env=env)
        assert r.returncode != 0 and r.stderr.startswith(f"error: {option}:"), r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_in_memory_storage_is_refused_for_run_with_the_reason(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    r = ablate("run", "tiny.toml", "--storage", "sqlite://", cwd=tmp_path)
    assert r.returncode == 2 and "in-memory database: nothing in it would outlive this run" in r.stderr, r.stderr


def test_a_data_dir_that_is_not_used_is_named(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY.replace('"synthetic"', '"fashion-mnist"').replace("train_subset = 128", "train_subset = 128\ntest_subset = 100"))
    r = ablate("run", "tiny.toml", "--storage", f"sqlite:///{tmp_path / 'a.db'}", "--data-dir", str(tmp_path / "nothere"),
               "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"the data dir {tmp_path / 'nothere'} does not exist; using" in r.stderr or "subset bundled with ablate" in r.stderr, r.stderr
    (tmp_path / "afile").write_text("x")
    r = ablate("run", "tiny.toml", "--storage", f"sqlite:///{tmp_path / 'a.db'}", "--data-dir", "afile", "--no-report", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --data-dir:") and "is a file, not a folder" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_help_texts_keep_their_brackets():
    r = ablate("run", "--help", cwd=Path.cwd(), env={**os.environ, "COLUMNS": "200"})
    text = " ".join(r.stdout.split())  # the help wraps at the terminal width
    assert "[default: beside the SQLite file]" in text and "[default: ~/.cache/ablate/data]" in text, text


def test_bench_prints_a_variant_name_with_brackets_as_text(tmp_path):
    r = ablate("bench", "--variant", "[/x]", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "[/x]" in r.stderr, r.stderr


def test_a_missing_count_is_a_dash():
    assert human(float("nan")) == "-" and human(None) == "-" and human(270_000) == "270K"


def test_a_database_in_a_read_only_folder_is_read_and_a_run_names_the_folder(tmp_path):
    """A copy of a study on a read-only mount: ls, show and report read it (read-only, immutable);
    a run says the folder is read-only. A private mount namespace makes the folder read-only."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a read-only bind mount needs root and unshare (util-linux)")
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(Path(__file__).resolve().parent / "fixtures" / "v0.1.0" / "legacy.db", ro / "legacy.db")
    url = f"sqlite:///{ro / 'legacy.db'}"
    script = (f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && "
              f"{sys.executable} -m ablate show legacy --storage {url} && "
              f"{sys.executable} -m ablate report legacy --storage {url} --out {tmp_path / 'r.html'}; "
              f"{sys.executable} -m ablate run {Path(__file__).resolve().parent / 'fixtures' / 'v0.1.0' / 'legacy.toml'} --storage {url}; "
              "echo run-exit=$?")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert "plain-8-w4" in r.stdout and (tmp_path / "r.html").is_file(), r.stdout + r.stderr
    assert f"error: --storage: {ro / 'legacy.db'} is in a read-only folder" in r.stderr and "run-exit=2" in r.stdout, r.stderr
    assert "Traceback" not in r.stderr


def test_a_stored_value_the_summary_cannot_use_is_a_note_not_a_traceback(tmp_path):
    """A study stored with a seed no 64-bit integer holds (as an old version allowed): show,
    report and export still open it, with a one-line note naming the value."""
    import optuna

    folder = tmp_path / "odd"
    shutil_copy = __import__("shutil").copytree
    shutil_copy(Path(__file__).resolve().parent / "fixtures" / "v0.1.0", folder)
    url = f"sqlite:///{folder / 'legacy.db'}"
    import sqlite3

    with sqlite3.connect(folder / "legacy.db") as db:  # as an old version wrote it: a seed past 2**63
        db.execute("UPDATE trial_user_attributes SET value_json = '9223372036854775808' WHERE key = 'seed' AND trial_id = "
                   "(SELECT MIN(trial_id) FROM trial_user_attributes WHERE key = 'seed')")
    assert optuna.load_study(study_name="legacy", storage=url).get_trials()[0].user_attrs["seed"] == 9223372036854775808
    for args in (("show", "legacy"), ("report", "legacy", "--out", str(folder / "r.html")), ("export", "legacy", "--out-dir", str(folder / "t"))):
        r = ablate(*args, "--storage", url, cwd=folder)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    show = ablate("show", "legacy", "--storage", url, cwd=folder)
    assert "note: seed: the stored value 9223372036854775808 is not a 64-bit integer" in show.stderr, show.stderr
    assert "9223372036854775808 is not a 64-bit integer" in (folder / "r.html").read_text()
