"""A stored study's results as one data object: what the terminal, the report and `ablate
export` all show. Every table is computed here, once; the page and the terminal only draw it.

    load_results(name, storage)  -> StudyResults, or a ReportError listing the studies there
    collect(ostudy, storage)     -> StudyResults of a loaded Optuna study
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd

from ablate.analysis import frames as F
from ablate.analysis import summary as SU
from ablate.analysis.search import SearchResults, search_results
from ablate.analysis.spaces import SpacesAnalysis, analyse_spaces, corrected_spaces
from ablate.analysis.why import Why, why_tables
from ablate.analysis.verdicts import PAIR_QUESTIONS, Finding, findings_table, joint_holm, recipes_of, samples, verdicts
from ablate.storage import StudyAttrs, safe_url

__all__ = ["Family", "PairTable", "StudyResults", "collect", "load_results"]


@dataclass(frozen=True)
class Family:
    """Variants that differ only in depth and connection, with everything drawn about them."""

    label: str
    summary: pd.DataFrame  # the family's rows of the variant summary
    curves: pd.DataFrame  # per epoch (F.curves)
    iteration_curves: pd.DataFrame  # per point (F.iteration_curves); empty for studies stored without points
    gradients: pd.DataFrame  # per-stage gradient norms (F.gradient_flow); empty unless degradation can be asked
    stem_ratios: pd.DataFrame  # the stem's gradient norm over the head's in the first epoch, per variant

    @property
    def by_depth(self) -> bool:
        """Error against depth can be drawn: two or more variants with final runs, at two or more depths."""
        done = self.summary[self.summary["seeds"] > 0]
        return len(done) >= 2 and done["depth"].nunique() >= 2


@dataclass(frozen=True)
class PairTable:
    """Variants that differ only in one axis at equal depth (SU.pairs), for one pair question."""

    topic: str
    axis: str
    a: str
    b: str
    title: str
    frame: pd.DataFrame


@dataclass
class StudyResults:
    """Everything shown about a study, as tables: read from the storage by `collect`."""

    name: str
    attrs: StudyAttrs
    storage: str  # without its password
    trials: pd.DataFrame
    epochs: pd.DataFrame
    points: pd.DataFrame
    summary: pd.DataFrame
    findings: list[Finding]
    searched: list[str]
    families: list[Family] = field(default_factory=list)
    pairs: list[PairTable] = field(default_factory=list)
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)  # one line each: stored values that could not be used
    #: an architecture search: one row per sampled architecture (ablate.analysis.search); else empty
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)  # an architecture search's samples (search.samples)
    search: SearchResults = field(default_factory=SearchResults)
    #: two or more [[space]] tables: their error distributions compared (ablate.analysis.spaces); else None
    spaces: SpacesAnalysis | None = None
    #: the final runs' diagnostics (ablate.analysis.why): the report's "Why" section and the export's init, lesion, landscape
    why: Why | None = None

    @property
    def dataset(self) -> str:
        return str(self.attrs.dataset or "")

    @property
    def findings_table(self) -> pd.DataFrame:
        return findings_table(self.findings)

    @property
    def done(self) -> pd.DataFrame:
        """The variants with finished final runs."""
        return self.summary[self.summary["seeds"] > 0] if len(self.summary) else self.summary

    def progress(self) -> dict[str, Any]:
        """Units finished (as the runner counts them: COMPLETE, PRUNED, or FAIL for a reason of
        their own) and trials running."""
        t = self.trials
        ended = t["state"].isin(["COMPLETE", "PRUNED"]) | (t["state"].eq("FAIL") & ~t["interrupted"].astype(bool))
        units = self.attrs.units
        return {"variants": len(self.summary), "trials": len(t), "units": units if isinstance(units, int) else None,
                "finished": int(t.loc[ended, "unit"].nunique()) if len(t) else 0,
                "running": int(t["state"].isin(["RUNNING", "WAITING"]).sum()) if len(t) else 0}


def _families(summary: pd.DataFrame, epochs: pd.DataFrame, points: pd.DataFrame) -> list[Family]:
    if summary.empty:
        return []
    cur = F.curves(epochs)
    by_it = F.iteration_curves(points, epochs)
    grads = F.gradient_flow(epochs)
    degradation = {label for label, _ in SU.degradation_families(summary)}
    out = []
    for label, g in SU.depth_families(summary):
        names = g["variant"]
        fam_grads = grads[grads["variant"].isin(names)] if label in degradation else grads.iloc[0:0]
        ratios = F.gradient_ratios(fam_grads) if len(fam_grads) else F.gradient_ratios(fam_grads.iloc[0:0])
        out.append(Family(label, g, cur[cur["variant"].isin(names)], by_it[by_it["variant"].isin(names)], fam_grads,
                          ratios[ratios["stage"] == "stem"].sort_values(["connection", "depth"]).reset_index(drop=True)))
    return out


def _pairs(summary: pd.DataFrame) -> list[PairTable]:
    done = summary[summary["seeds"] > 0] if len(summary) else summary
    titles = {"activation": "Pre- vs post-activation at equal depth", "block": "Basic vs bottleneck blocks at equal depth"}
    out = []
    for topic, axis, a, b, _question in PAIR_QUESTIONS:
        frame = SU.pairs(done, axis, a, b) if len(done) else pd.DataFrame()
        if len(frame):
            out.append(PairTable(topic, axis, a, b, titles.get(axis, f"{a} vs {b} at equal depth"), frame))
    return out


def collect(study: optuna.Study, storage: str = "") -> StudyResults:
    """The results of a loaded study: tables, families, pairs, findings (tested and corrected)."""
    trials = F.trials_table(study)
    epochs = F.epochs_table(study)
    points = F.points_table(study)
    attrs = StudyAttrs.read(study.user_attrs)
    searched = SU.searched_keys(attrs, trials)
    summary = SU.variant_summary(trials, attrs.variants, searched)
    search = search_results(study, trials)
    sampled = search.samples
    spaces = analyse_spaces(sampled) if len(sampled) and sampled["space"].nunique() >= 2 else None
    # Holm across every comparison of the report: the findings' tests and the design spaces' alike.
    spaces_p = spaces.tests["p_value"].tolist() if spaces is not None and len(spaces.tests) else []
    findings = verdicts(summary, str(attrs.dataset or ""), samples(trials, recipes_of(study)),
                        finalists=search.finalists["variant"].tolist() if search.is_search and len(search.finalists) else None,
                        extra_p=spaces_p)
    if spaces_p:
        spaces = corrected_spaces(spaces, joint_holm(findings, spaces_p))
    notes = list(dict.fromkeys(trials.attrs.get("notes", [])))
    return StudyResults(
        study.study_name, attrs, safe_url(storage) if storage else "", trials, epochs, points, summary, findings, searched,
        families=_families(summary, epochs, points), pairs=_pairs(summary),
        sensitivity=SU.sensitivity(trials, searched) if searched else pd.DataFrame(),
        failures=SU.failures(trials) if len(trials) else pd.DataFrame(), notes=notes, samples=search.samples, search=search,
        spaces=spaces,
        why=why_tables(study, trials),
    )


def load_results(study_name: str, storage: str) -> StudyResults:
    return collect(F.open_study(study_name, storage), storage)

