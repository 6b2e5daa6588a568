"""Loss studies: many ordinary training runs (variants x seeds), resumable, then summarised with
intervals across seeds and paired comparisons on the same evaluation examples.

`python -m train.study --config configs/study/<name>.py --workdir DIR` is the entry point.
"""

from jaxsent.study.report import write_report
from jaxsent.study.runner import (
    PlannedRun,
    apply_overrides,
    load_config_file,
    plan_study,
    run_study,
)
from jaxsent.study.summary import HYPOTHESES, compare, flatten_results, summarize

__all__ = [
    "HYPOTHESES",
    "PlannedRun",
    "apply_overrides",
    "compare",
    "flatten_results",
    "load_config_file",
    "plan_study",
    "run_study",
    "summarize",
    "write_report",
]
