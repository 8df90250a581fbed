"""The HTML report and the exported tables."""

from ablate.report.page import *  # noqa: F401,F403
from ablate.report.page import __all__  # noqa: F401
