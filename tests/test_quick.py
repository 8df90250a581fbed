"""The main job, `ablate run studies/quick.toml` (README), from the session's one run of it
(tests/conftest.py, `quick_run`): it runs on a fresh offline machine from the bundled data, and
its results show the degradation problem and its removal by shortcuts, with the statistics the
verdicts use (paired t-tests by seed, Holm's correction; ablate.stats, tested in test_stats)."""

from __future__ import annotations

import html

import numpy as np
import optuna
import pytest
from conftest import QUICK_STUDY
from scipy import stats as sps

from ablate.analysis import stats

from ablate.engine.data import BUNDLED_SOURCE
from ablate.spec.study import load_study
from ablate.analysis import recipes_of, samples, trials_table, variant_summary, verdicts

def final_train_errors(storage: str) -> dict[str, dict[int, float]]:
    """Per variant, seed -> final training error of its final run."""
    trials = optuna.load_study(study_name="quick", storage=storage).get_trials()
    out: dict[str, dict[int, float]] = {}
    for t in trials:
        if t.user_attrs.get("kind") == "final" and t.state == optuna.trial.TrialState.COMPLETE:
            out.setdefault(t.user_attrs["variant"], {})[t.user_attrs["seed"]] = t.user_attrs["train_error"]
    return out


def test_the_main_job_runs_on_a_fresh_offline_machine(quick_run):
    """No network, an empty home directory and no /usr/share/datasets: the bundled subset is used,
    with one line saying so, and the run completes with its report."""
    if quick_run.not_hidden:
        pytest.skip(quick_run.not_hidden)
    result = quick_run.result
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "using the subset bundled with ablate" in notes[0], result.stderr
    trials = optuna.load_study(study_name="quick", storage=quick_run.storage).get_trials()
    assert trials and all(t.user_attrs["data"].startswith(BUNDLED_SOURCE) for t in trials)
    assert quick_run.report.is_file()


def test_the_main_job_shows_the_degradation_and_its_removal(quick_run):
    result = quick_run.result
    assert result.returncode == 0, result.stderr
    quick = load_study(QUICK_STUDY)
    depths = sorted({s.depth for s in quick.variants})
    assert len(depths) >= 3 and {s.connection for s in quick.variants} == {"plain", "residual"}
    errors = final_train_errors(quick_run.storage)
    seeds = list(quick.final_seeds)
    assert all(sorted(errors[s.name]) == seeds for s in quick.variants)  # every variant ran every seed

    def paired(a: str, b: str) -> tuple[float, float]:
        """Mean difference a - b over seeds and the two-sided paired t-test's p-value."""
        x, y = (np.array([errors[v][seed] for seed in seeds]) for v in (a, b))
        return float(np.mean(x - y)), float(sps.ttest_rel(x, y).pvalue)

    name = {(s.connection, s.depth): s.name for s in quick.variants}
    shallow, deep = depths[0], depths[-1]
    rise, p_rise = paired(name["plain", deep], name["plain", shallow])
    gain, p_gain = paired(name["residual", deep], name["plain", deep])
    own, p_own = paired(name["residual", deep], name["residual", shallow])
    p_rise, p_gain, p_own = stats.holm([p_rise, p_gain, p_own])  # the report's three comparisons, nothing else
    assert rise > 0 and p_rise < stats.ALPHA, (rise, p_rise)  # deeper plain nets train worse ...
    assert gain < 0 and p_gain < stats.ALPHA, (gain, p_gain)  # ... shortcuts remove it at the same depth ...
    assert not (own > 0 and p_own < stats.ALPHA), (own, p_own)  # ... and the deep residual net is no worse than the shallow one

    # `ablate run` wrote the report; its verdict states the degradation with this run's numbers.
    study = optuna.load_study(study_name="quick", storage=quick_run.storage)
    trials = trials_table(study)
    summary = variant_summary(trials, study.user_attrs["variants"]).set_index("variant")
    found = verdicts(summary.reset_index(), "fashion-mnist", samples(trials, recipes_of(study)))
    findings = {f.topic: f for f in found}
    assert findings["degradation"].answer == "yes" and findings["residual"].answer == "yes"
    # The report's own tests agree with scipy's, computed above from the stored errors.
    assert sum(len(f.comparisons) for f in found) == 3
    assert findings["degradation"].deciding.method == stats.PAIRED
    assert findings["degradation"].deciding.p_adjusted == pytest.approx(p_rise)
    assert findings["residual"].deciding.p_adjusted == pytest.approx(p_gain)
    page = quick_run.report.read_text()
    for topic in ("degradation", "residual"):
        assert html.escape(findings[topic].text) in page
    train_error = summary["train_error_mean"]
    for variant in (name["plain", shallow], name["plain", deep]):
        assert f"{100 * train_error[variant]:.1f}%" in findings["degradation"].text
