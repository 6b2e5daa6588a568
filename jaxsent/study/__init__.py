"""Loss studies: many ordinary training runs (variants x seeds), resumable, then summarised with
intervals across seeds and paired comparisons on the same evaluation examples.

Runs of two classes are compared on their logits ``[N]`` with the binary metrics; runs of K
classes (e.g. SST-5) on their logits ``[N, K]`` with the K-class ones (macro-F1, classwise ECE,
and the mean absolute error in classes when the classes are ordered).

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
