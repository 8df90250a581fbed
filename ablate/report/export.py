"""`ablate export`: a study's tables as CSV or Parquet files, for notebooks."""

from __future__ import annotations

from pathlib import Path

from ablate.analysis.frames import ReportError
from ablate.analysis.results import StudyResults, load_results
from ablate.analysis.spaces import EDF_COLUMNS, SPACES_COLUMNS
from ablate.report.page import default_path
from ablate.spec.paths import usable_dir

__all__ = ["EXPORT_FORMATS", "export_tables", "write_tables"]

EXPORT_FORMATS = ("csv", "parquet")


def export_tables(study_name: str, storage: str, out_dir: str | Path, fmt: str = "csv") -> list[Path]:
    """Write the per-trial, per-epoch and per-variant tables, the findings and the per-point
    training curves of a study as `<study>-trials.<fmt>`, `-epochs`, `-variants`, `-findings`,
    `-points` (and, for a search, `-samples`; for two or more spaces `-spaces` and `-edf`; and `-init`, `-lesion`, `-landscape` where final runs have diagnostics) in `out_dir` (`~` expanded, created when missing); returns the paths (parquet
    through pyarrow, a dependency)."""
    if fmt not in EXPORT_FORMATS:
        raise ReportError(f"format: {fmt!r} is not valid; use one of {', '.join(EXPORT_FORMATS)}")
    results = load_results(study_name, storage)
    return write_tables(results, usable_dir(out_dir, "--out-dir", create=True), fmt)


def write_tables(results: StudyResults, out: Path, fmt: str = "csv") -> list[Path]:
    stem = default_path(results.name).stem
    frames = {"trials": results.trials, "epochs": results.epochs, "variants": results.summary,
              "findings": results.findings_table, "points": results.points}
    if len(results.samples):  # an architecture search: one row per sampled architecture
        frames["samples"] = results.samples
    if results.spaces is not None:  # design spaces compared: one row per pair, and the EDFs drawn
        frames["spaces"] = results.spaces.tests[list(SPACES_COLUMNS)]
        frames["edf"] = results.spaces.edf[list(EDF_COLUMNS)]
    why = results.why
    if why is not None:  # the final runs' diagnostics, where they were measured
        frames.update({k: f for k, f in (("init", why.init), ("lesion", why.lesion), ("landscape", why.landscape)) if len(f)})
    paths = []
    for name, frame in frames.items():
        path = out / f"{stem}-{name}.{fmt}"
        frame = frame.copy()
        for c in frame.columns:  # one plain type per column, for parquet
            if frame[c].dtype == object:
                frame[c] = frame[c].map(lambda v: v if v is None or type(v) in (str, bool, int, float) else str(v))
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        paths.append(path)
    return paths
