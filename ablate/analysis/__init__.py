"""A stored study as tables, statistics and verdicts: data only, nothing drawn here.

    frames     trials, epochs and points as tables; curves and gradient flow over seeds
    summary    one row per variant; families and pairs
    stats      the calibrated tests (scipy.stats): paired or Welch t-tests, Holm's correction
    verdicts   the study's answers (`Finding`, `Answer`), tested and corrected together
    papers     the papers' published errors
    search     an architecture search's samples; spaces: design spaces compared (EDFs, a calibrated test)
    format     numbers in words, for every place that prints them
    why        the final runs' diagnostics: init, lesion and landscape tables, and what they say
    results    `StudyResults`: the one data object the terminal, the report and the export share
"""

from ablate.analysis import format, stats
from ablate.analysis.frames import (CURVE_AXES, EPOCH_FIELDS, TRIAL_COLUMNS, ReportError, curves, epochs_table, finals,
                                    grad_norms_long, gradient_flow, gradient_ratios, hyperparameter_columns,
                                    iteration_curves, open_study, points_table, trials_table)
from ablate.analysis.papers import HE2016_TABLE6, HE2016B, PaperValue, paper_error
from ablate.analysis.search import SAMPLE_COLUMNS, SearchResults, objectives_of, samples_table, search_results
from ablate.analysis.spaces import EDF_COLUMNS, SPACES_COLUMNS, SpacesAnalysis, analyse_spaces, overlap_warning
from ablate.analysis.why import PER_SEED_MEASURES, WHY_AXES, Why, mean_ci, readings, why_tables
from ablate.analysis.results import Family, PairTable, StudyResults, collect, load_results
from ablate.analysis.summary import (FAMILY_AXES, SUMMARY_STATS, VARIED_AXES, degradation_families, depth_families,
                                     efficient_front, failures, family_label, pairs, searched_keys, sensitivity,
                                     variant_summary)
from ablate.analysis.verdicts import (FINDING_COLUMNS, METRIC_LABELS, PAIR_QUESTIONS, TRAIN_ERROR_MEANING, Answer,
                                      Comparison, Finding, compare, Samples, comparison_brief, comparison_cells, findings_table, recipes_of, samples, test_words,
                                      verdicts)

__all__ = ["PER_SEED_MEASURES", "WHY_AXES", "Why", "mean_ci", "readings", "why_tables", "SAMPLE_COLUMNS", "SearchResults", "objectives_of", "samples_table", "search_results", 
    "EDF_COLUMNS", "SPACES_COLUMNS", "SpacesAnalysis", "analyse_spaces", "overlap_warning",
    "format", "stats",
    "CURVE_AXES", "EPOCH_FIELDS", "TRIAL_COLUMNS", "ReportError", "curves", "epochs_table", "finals", "grad_norms_long",
    "gradient_flow", "gradient_ratios", "hyperparameter_columns", "iteration_curves", "open_study", "points_table",
    "trials_table",
    "HE2016_TABLE6", "HE2016B", "PaperValue", "paper_error",
    "Family", "PairTable", "StudyResults", "collect", "load_results",
    "FAMILY_AXES", "SUMMARY_STATS", "VARIED_AXES", "degradation_families", "depth_families", "efficient_front",
    "failures", "family_label", "pairs", "searched_keys", "sensitivity", "variant_summary",
    "FINDING_COLUMNS", "METRIC_LABELS", "PAIR_QUESTIONS", "TRAIN_ERROR_MEANING", "Answer", "compare", "Comparison", "Finding",
    "Samples", "findings_table", "recipes_of", "samples", "test_words", "comparison_brief", "comparison_cells", "verdicts",
]
