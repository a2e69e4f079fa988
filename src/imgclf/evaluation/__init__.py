"""Torch-free evaluation: metrics, evaluating an engine on a dataset split through the serving
path, and the written records of a run (history, plots, ``metrics.json``, ``report.md``).

Modules, one job each: :mod:`~imgclf.evaluation.metrics` (accuracy, top-5, confusion matrix,
per-class figures), :mod:`~imgclf.evaluation.evaluate` (an engine on a split),
:mod:`~imgclf.evaluation.history` (per-epoch records), :mod:`~imgclf.evaluation.plots` (matplotlib,
imported only when drawing) and :mod:`~imgclf.evaluation.report` (``metrics.json``, ``report.md``).
"""

from imgclf.evaluation.evaluate import SplitOutput, evaluate_engine, evaluate_split, split_probabilities
from imgclf.evaluation.history import HISTORY_COLUMNS, read_history, write_history
from imgclf.evaluation.metrics import ClassMetrics, Evaluation, compute_metrics, format_evaluation, label_map
from imgclf.evaluation.plots import (
    PlottingUnavailable,
    can_plot,
    plot_confusion_matrix,
    plot_ladder,
    plot_learning_curves,
    save_worst_grid,
    worst_indices,
)
from imgclf.evaluation.report import (
    evaluation_markdown,
    write_evaluation,
    write_ladder_report,
    write_run_report,
)

__all__ = [
    "HISTORY_COLUMNS", "ClassMetrics", "PlottingUnavailable", "can_plot", "Evaluation", "SplitOutput", "compute_metrics", "evaluate_engine",
    "evaluate_split", "evaluation_markdown", "format_evaluation", "label_map", "plot_confusion_matrix",
    "plot_ladder", "plot_learning_curves", "read_history", "save_worst_grid", "split_probabilities",
    "worst_indices", "write_evaluation", "write_history", "write_ladder_report", "write_run_report",
]
