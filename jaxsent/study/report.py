"""A study's summary as files: summary.json, summary.csv, report.md and PNG figures.

A K-class study (``summary["classes"]``) reports its own metrics (`MULTICLASS_TABLE_METRICS`:
macro-F1, classwise ECE, and MAE and accuracy within one for ordered classes), F1 per class,
reliability curves of the top-label confidence ``max_k p_k``, and how decided its models are by
the top-two logit margin and the share of the most predicted class.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from etils import epath
from matplotlib.figure import Figure

from jaxsent import metrics
from jaxsent import multiclass_metrics as mm
from jaxsent.study.summary import POINTS_METRICS, _predictions, write_csv

TABLE_METRICS = (
    "accuracy",
    "f1",
    "auroc",
    "nll",
    "brier",
    "ece",
    "nll_ts",
    "ece_ts",
    "temperature",
)
FIGURE_METRICS = ("accuracy", "nll", "brier", "ece", "nll_ts", "ece_ts")
DECISIVENESS = ("accuracy", "median_abs_logit", "positive_rate", "final_train_loss")
# K-class studies; the ordinal metrics only where the classes are ordered (`_layout`).
MULTICLASS_TABLE_METRICS = (
    "accuracy",
    "macro_f1",
    "mae",
    "accuracy_within_one",
    "nll",
    "brier",
    "ece",
    "classwise_ece",
    "nll_ts",
    "ece_ts",
    "classwise_ece_ts",
    "temperature",
)
MULTICLASS_FIGURE_METRICS = ("accuracy", "macro_f1", "mae", "nll", "ece", "nll_ts", "ece_ts")
MULTICLASS_DECISIVENESS = ("accuracy", "median_logit_margin", "top_class_rate", "final_train_loss")
_ORDINAL_ONLY = ("mae", "accuracy_within_one")


class _Layout(NamedTuple):
    """What the report shows for a binary or a K-class study."""

    table: tuple[str, ...]
    figure: tuple[str, ...]
    decisiveness: tuple[str, ...]
    classes: dict[str, Any] | None


def _layout(summary: dict[str, Any]) -> _Layout:
    classes = summary.get("classes")
    if classes is None:
        return _Layout(TABLE_METRICS, FIGURE_METRICS, DECISIVENESS, None)

    def keep(names):
        return tuple(m for m in names if classes["ordinal"] or m not in _ORDINAL_ONLY)

    return _Layout(
        keep(MULTICLASS_TABLE_METRICS),
        keep(MULTICLASS_FIGURE_METRICS),
        MULTICLASS_DECISIVENESS,
        classes,
    )


def _in_points(metric: str) -> bool:
    """Metrics shown x 100: accuracies, macro averages and per-class rates."""
    return metric in POINTS_METRICS or metric.startswith("per_class/")


def _save(fig: Figure, path: epath.Path) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    path.write_bytes(buffer.getvalue())
    return path.name


def _prefix(eval_set: str) -> str:
    return "" if eval_set == "eval" else f"{eval_set}/"


def plot_metric_intervals(summary: dict[str, Any], path: epath.Path, *, eval_set: str) -> str:
    """Each metric per variant: every seed as a dot, the mean and its 95% t-interval as a bar."""
    variants = list(summary["variants"])
    figure_metrics = _layout(summary).figure
    fig = Figure(
        figsize=(3.2 * len(figure_metrics), 0.45 * len(variants) + 1.6), layout="constrained"
    )
    axes = fig.subplots(1, len(figure_metrics), sharey=True)
    for ax, metric in zip(axes, figure_metrics, strict=True):
        key = _prefix(eval_set) + metric
        for y, variant in enumerate(variants):
            seeds = [r[key] for r in summary["runs"] if r["variant"] == variant and key in r]
            ax.plot(seeds, [y] * len(seeds), "o", color="0.6", markersize=4)
            interval = summary["variants"][variant].get(key)
            if interval and np.isfinite(interval["ci_low"]):
                ax.errorbar(
                    interval["mean"],
                    y,
                    xerr=[
                        [interval["mean"] - interval["ci_low"]],
                        [interval["ci_high"] - interval["mean"]],
                    ],
                    fmt="D",
                    color="C0",
                    capsize=3,
                )
            elif interval:
                ax.plot(interval["mean"], y, "D", color="C0")
        ax.set_title(metric)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(variants)), variants)
    axes[0].invert_yaxis()
    fig.suptitle(f"{eval_set}: seeds (grey), mean and 95% t-interval (blue)")
    return _save(fig, path)


def plot_reliability_overlay(
    runs, variants: Sequence[str], path: epath.Path, *, eval_set: str, num_bins: int = 15
) -> str:
    """Reliability curves of every variant (seeds pooled) on one diagram.

    Binary runs: the confidence ``max(p, 1 - p)``; K-class runs: the top-label confidence
    ``max_k p_k`` against the accuracy of the argmax, over [1/K, 1].
    """
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    lowest = 0.5
    diagonal = ax.plot([0.5, 1], [0.5, 1], "k--", linewidth=1, label="perfect calibration")[0]
    for i, variant in enumerate(variants):
        mine = [r for r in runs if r.variant == variant and r.done]
        if not mine:
            continue
        predictions = [_predictions(r, eval_set) for r in mine]
        logits = np.concatenate([p.logit for p in predictions])
        labels = np.concatenate([p.label for p in predictions])
        if logits.ndim == 2:
            lowest = 1 / logits.shape[1]
            bins = mm.top_label_reliability_bins(logits, labels, num_bins=num_bins)
            ece = float(mm.expected_calibration_error(logits, labels, num_bins=num_bins))
        else:
            confidence, outcome = metrics.calibration_inputs(logits, labels)
            bins = metrics.reliability_bins(confidence, outcome, num_bins=num_bins)
            ece = float(metrics.expected_calibration_error(logits, labels, num_bins=num_bins))
        count, conf, acc = (np.asarray(x) for x in bins[:3])
        filled = count > 0
        ax.plot(
            conf[filled],
            acc[filled],
            "o-",
            color=f"C{i % 10}",
            markersize=3,
            label=f"{variant} (ECE {ece:.3f})",
        )
    if lowest < 0.5:  # K classes: the top-label confidence lies in [1/K, 1]
        diagonal.set_data([lowest, 1], [lowest, 1])
        ax.set_xlim(lowest, 1.0)
        ax.set_xlabel("top-label confidence max_k p_k")
    else:
        ax.set_xlim(0.5, 1.0)
        ax.set_xlabel("confidence max(p, 1 - p)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{eval_set}: reliability, seeds pooled")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_length_strata(
    summary: dict[str, Any], path: epath.Path, *, metric: str = "accuracy"
) -> str:
    """`metric` per length quartile of the eval split, mean over seeds, one line per variant."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    strata = sorted(
        {
            int(k.split("/")[0][len("length_q") :])
            for r in summary["runs"]
            for k in r
            if k.startswith("length_q")
        }
    )
    for i, (variant, values) in enumerate(summary["variants"].items()):
        means = [values.get(f"length_q{k}/{metric}", {}).get("mean", np.nan) for k in strata]
        ax.plot(strata, means, "o-", color=f"C{i % 10}", label=variant)
    ax.set_xticks(strata, [f"Q{k}" for k in strata])
    ax.set_xlabel("length quartile of the evaluation examples (Q1 shortest)")
    ax.set_ylabel(f"{metric} (mean over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _interval_cell(values: dict[str, Any] | None, metric: str) -> str:
    if not values:
        return ""
    scale, digits = (100, 2) if _in_points(metric) else (1, 4)
    mean = values["mean"] * scale
    if not np.isfinite(values["ci_low"]):
        return f"{mean:.{digits}f}"
    half = (values["ci_high"] - values["ci_low"]) / 2 * scale
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def markdown_report(
    summary: dict[str, Any], *, eval_sets: Sequence[str], figures: dict[str, str], command: str
) -> str:
    """report.md: what ran, per-variant tables, paired comparisons, verdicts, figures."""
    layout = _layout(summary)
    lines = ["# Loss study", "", f"Command: `{command}`", ""]
    study = summary.get("study", {})
    if study:
        lines += ["```json", json.dumps(study, indent=2, default=str), "```", ""]
    if layout.classes is not None:
        names = layout.classes["names"]
        order = "ordered" if layout.classes["ordinal"] else "unordered"
        lines += [f"Classes ({len(names)}, {order}): " + ", ".join(names) + ".", ""]
    lines += ["## Verdicts", ""]
    lines += [f"- {v['text']}" for v in summary["verdicts"]] or [
        "- (no hypothesis has both variants yet)"
    ]
    for eval_set in eval_sets:
        prefix = _prefix(eval_set)
        lines += ["", f"## {eval_set}: mean ± half-width of the 95% t-interval across seeds", ""]
        lines += ["| variant | seeds | " + " | ".join(layout.table) + " |"]
        lines += ["|---|---|" + "---|" * len(layout.table)]
        for variant, values in summary["variants"].items():
            cells = [_interval_cell(values.get(prefix + m), m) for m in layout.table]
            lines += [f"| {variant} | {values['n_seeds']} | " + " | ".join(cells) + " |"]
        if layout.classes is None:
            lines += [
                "",
                "Accuracy in %. `*_ts`: after temperature scaling (fitted on each run's "
                "validation split).",
                "",
            ]
        else:
            lines += ["", _MULTICLASS_NOTE, ""]
            lines += _per_class_table(summary, layout.classes["names"], prefix=prefix)
        rows = [c for c in summary["comparisons"] if c["eval_set"] == eval_set]
        if rows:
            lines += [
                f"### {eval_set}: paired bootstrap against the baseline (variant minus baseline)",
                "",
            ]
            lines += [
                "| variant | baseline | metric | seeds | difference | 95% interval | p |",
                "|---|---|---|---|---|---|---|",
            ]
            for c in rows:
                scale = 100 if _in_points(c["metric"]) else 1
                d, lo, hi = (c[k] * scale for k in ("difference", "ci_low", "ci_high"))
                lines += [
                    f"| {c['variant']} | {c['baseline']} | {c['metric']} | {c['n_seeds']} | "
                    f"{d:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {c['p_value']:.3f} |"
                ]
        for name in (f"metrics_{eval_set}", f"reliability_{eval_set}"):
            if name in figures:
                lines += ["", f"![{name}]({figures[name]})"]
    abstaining = (
        "abstaining (logits near 0)"
        if layout.classes is None
        else "abstaining (`median_logit_margin`, the largest logit minus the second, near 0)"
    )
    one_class = (
        "predicting one class"
        if layout.classes is None
        else "predicting one class (`top_class_rate`, the share of the class predicted most "
        "often, near 1)"
    )
    lines += [
        "",
        "## How decided the models are (eval split)",
        "",
        "A loss that falls while accuracy stays low has been lowered without learning: by "
        f"{abstaining} or by {one_class}. The training loss is in each "
        "variant's own loss, so it compares seeds, not variants.",
        "",
        "| variant | seeds | " + " | ".join(layout.decisiveness) + " |",
        "|---|---|" + "---|" * len(layout.decisiveness),
    ]
    for variant, values in summary["variants"].items():
        cells = [_interval_cell(values.get(m), m) for m in layout.decisiveness]
        lines += [f"| {variant} | {values['n_seeds']} | " + " | ".join(cells) + " |"]
    if "length_strata" in figures:
        lines += [
            "",
            "## Accuracy by length quartile (eval split)",
            "",
            f"![length strata]({figures['length_strata']})",
        ]
    lines += _length_comparison_table(summary.get("comparisons_by_length", []))
    lines += [
        "",
        "## Runs",
        "",
        "Every run's metrics are in `summary.csv` / `summary.json`; each run folder holds its "
        "config, metrics.jsonl, eval_results.json, predictions and reliability diagram.",
        "",
    ]
    return "\n".join(lines)


_MULTICLASS_NOTE = (
    "Accuracy, macro-F1 and accuracy within one in %; `mae`: mean absolute error in classes "
    "(ordered classes); `brier`: Brier's K-class sum, in [0, 2]; `ece`: top-label ECE, "
    "`classwise_ece`: the mean over classes of each class's ECE (15 bins). `*_ts`: after "
    "temperature scaling (fitted on each run's validation split)."
)


def _per_class_table(summary: dict[str, Any], names: Sequence[str], *, prefix: str) -> list[str]:
    """F1 of each class per variant (mean ± half-width of the t-interval), in %."""
    keys = [f"{prefix}per_class/{name}/f1" for name in names]
    if not any(key in values for values in summary["variants"].values() for key in keys):
        return []
    lines = [
        "F1 per class, in %:",
        "",
        "| variant | seeds | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for variant, values in summary["variants"].items():
        cells = [_interval_cell(values.get(key), key.removeprefix(prefix)) for key in keys]
        lines += [f"| {variant} | {values['n_seeds']} | " + " | ".join(cells) + " |"]
    return [*lines, ""]


def _length_comparison_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Paired differences per length quartile: one line per (variant, baseline, metric)."""
    if not rows:
        return []
    strata = {r["stratum"]: (r["low"], r["high"]) for r in rows}
    head = [f"Q{k} ({lo:g}-{hi:g})" for k, (lo, hi) in sorted(strata.items())]
    lines = [
        "",
        "### Paired differences per length quartile (eval split)",
        "",
        "Variant minus baseline on the examples of each quartile of whole-text token length "
        "(the same strata as `length_q*` in `eval_results.json`), averaged over the seeds both "
        "have; 95% bootstrap interval. Accuracy in points.",
        "",
        "| variant | baseline | metric | seeds | " + " | ".join(head) + " |",
        "|---|---|---|---|" + "---|" * len(head),
    ]
    keys = dict.fromkeys((r["variant"], r["baseline"], r["metric"]) for r in rows)
    for variant, baseline, metric in keys:
        mine = {
            r["stratum"]: r
            for r in rows
            if (r["variant"], r["baseline"], r["metric"]) == (variant, baseline, metric)
        }
        scale, digits = (100, 2) if metric == "accuracy" else (1, 4)
        cells = []
        for k in sorted(strata):
            r = mine.get(k)
            if r is None:
                cells.append("")
                continue
            d, lo, hi = (r[key] * scale for key in ("difference", "ci_low", "ci_high"))
            cells.append(f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]")
        n_seeds = next(iter(mine.values()))["n_seeds"]
        lines += [f"| {variant} | {baseline} | {metric} | {n_seeds} | " + " | ".join(cells) + " |"]
    return lines


def summary_json(summary: dict[str, Any]) -> str:
    """`summary` as strict JSON: a NaN (an interval of one seed) or infinity becomes null."""

    def strict(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: strict(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [strict(v) for v in value]
        return value

    return json.dumps(strict(summary), indent=2, allow_nan=False) + "\n"


def write_report(
    summary: dict[str, Any], runs, workdir: epath.Path, *, eval_sets: Sequence[str], command: str
) -> None:
    """Writes summary.json, summary.csv, the figures and report.md into `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "summary.json").write_text(summary_json(summary))
    write_csv(summary["runs"], workdir / "summary.csv")
    figures: dict[str, str] = {}
    if summary["runs"]:
        variants = list(summary["variants"])
        for eval_set in eval_sets:
            figures[f"metrics_{eval_set}"] = plot_metric_intervals(
                summary, workdir / f"metrics_{_file_part(eval_set)}.png", eval_set=eval_set
            )
            figures[f"reliability_{eval_set}"] = plot_reliability_overlay(
                runs,
                variants,
                workdir / f"reliability_{_file_part(eval_set)}.png",
                eval_set=eval_set,
            )
        figures["length_strata"] = plot_length_strata(summary, workdir / "length_strata.png")
    (workdir / "report.md").write_text(
        markdown_report(summary, eval_sets=eval_sets, figures=figures, command=command)
    )


def _file_part(eval_set: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in eval_set)
