"""The HTML report and the exported tables: drawn from a finished `ablate.analysis.StudyResults`.

    figures   plotly figures of finished tables
    search    the "Architecture search" section: its figures and finalists
    why       the "Why" section: the final runs' diagnostics drawn, and their readings
    page      the self-contained page: render(results), write_report(name, storage)
    spaces    the "Design spaces" section: several [[space]] tables compared
    export    `ablate export`: the tables as CSV or Parquet
"""

from ablate.analysis.frames import ReportError
from ablate.report.export import EXPORT_FORMATS, export_tables, write_tables
from ablate.report.why import why_section
from ablate.report.page import build_report, default_path, render, write_page, write_report

__all__ = ["ReportError", "EXPORT_FORMATS", "export_tables", "write_tables", "build_report", "default_path", "render",
           "write_page", "write_report", "why_section"]
