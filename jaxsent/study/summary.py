"""A finished (or partly finished) study as numbers: per-run rows, per-variant intervals across
seeds, paired comparisons against the baseline on the same evaluation examples, and verdicts.

Everything here reads the run folders the runner wrote and computes; nothing trains.

A study is binary or K-class by its runs' ``eval_results.json`` (K-class runs name their
``class_names``). Binary runs are compared on `COMPARED_METRICS` (`jaxsent.metrics`); K-class
runs on their logits ``[N, K]`` with `MULTICLASS_COMPARED_METRICS` (`jaxsent.multiclass_metrics`:
accuracy, macro-F1, NLL, Brier, top-label and classwise ECE, the calibration metrics again after
temperature scaling, and the mean absolute error in classes when the classes are ordered), and
their summary names the classes (``summary["classes"]``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from etils import epath

from jaxsent import reporting, stats
from jaxsent.evaluation import length_stratum_index
from jaxsent.study.runner import PREDICTIONS_CSV, PREDICTIONS_PARQUET, RESULTS_FILE, PlannedRun
from jaxsent.training.loop import extra_eval_dir

# Metrics compared between variants (the temperature-scaled ones divide each run's logits by the
# temperature that run fitted on its own validation split).
COMPARED_METRICS = ("accuracy", "nll", "brier", "ece", "nll_ts", "ece_ts")
# The same for K-class runs (`jaxsent.stats.BOOTSTRAP_METRICS` on logits [N, K]); with ordered
# classes the mean absolute error in classes follows macro-F1 (`compared_metrics`).
MULTICLASS_COMPARED_METRICS = (
    "accuracy",
    "macro_f1",
    "nll",
    "brier",
    "ece",
    "classwise_ece",
    "nll_ts",
    "ece_ts",
    "classwise_ece_ts",
)
ORDINAL_COMPARED_METRICS = ("mae",)
# Compared within each length quartile (fewer examples each: ECE's bins would be thin).
LENGTH_COMPARED_METRICS = ("accuracy", "nll")
HIGHER_IS_BETTER = {
    "accuracy": True,
    "macro_f1": True,
    "macro_recall": True,
    "accuracy_within_one": True,
}
# Metrics in [0, 1] that reports and verdicts give in points (x 100).
POINTS_METRICS = ("accuracy", "macro_f1", "macro_recall", "accuracy_within_one")
# The metrics a verdict line names (those a study compared, in its order).
VERDICT_METRICS = ("accuracy", "macro_f1", "mae", "ece", "nll", "ece_ts")

# The seed's hypotheses: (what is tested, variant, the variant it differs from by that term).
HYPOTHESES = (
    ("length weighting", "length_only", "bce"),
    ("confidence weighting", "confidence_only", "bce"),
    ("label smoothing", "bce_ls", "bce"),
    ("reversed focal modulator", "reversed_focal", "bce"),
    ("focal modulator (gamma = 2)", "focal_gamma2", "bce"),
    ("the seed's weighted loss (length x confidence)", "weighted", "bce"),
    ("the seed's focal loss (every term combined)", "focal_seed", "bce"),
    ("stop-gradient through the weights", "weighted_stopgrad", "weighted"),
)
# Hypotheses about long texts, whose verdict is also given on the longest length quartile.
LENGTH_VERDICTS = ("length_only",)


class StudyClasses(NamedTuple):
    """The classes of a K-class study's runs (a binary study has None)."""

    names: tuple[str, ...]
    ordinal: bool


def result_classes(results: dict[str, Any]) -> StudyClasses | None:
    """The classes an `eval_results.json` names: K-class reports list ``class_names``."""
    if "class_names" not in results:
        return None
    return StudyClasses(tuple(results["class_names"]), bool(results.get("ordinal", False)))


def study_classes(runs: Iterable[PlannedRun]) -> StudyClasses | None:
    """The classes of the finished runs: None when they are binary.

    Raises:
      ValueError: finished runs that disagree (binary and K-class, or other class names).
    """
    seen: dict[StudyClasses | None, PlannedRun] = {}
    for run in runs:
        if run.done:
            seen.setdefault(result_classes(read_results(run)), run)
    if len(seen) > 1:
        described = "; ".join(
            f"{run.name}: {'binary' if c is None else ', '.join(c.names)}"
            for c, run in seen.items()
        )
        raise ValueError(f"the study's runs have different classes ({described})")
    return next(iter(seen), None)


def compared_metrics(classes: StudyClasses | None) -> tuple[str, ...]:
    """The metrics `summarize` compares for runs of `classes` (None: binary)."""
    if classes is None:
        return COMPARED_METRICS
    ordinal = ORDINAL_COMPARED_METRICS if classes.ordinal else ()
    return (*MULTICLASS_COMPARED_METRICS[:2], *ordinal, *MULTICLASS_COMPARED_METRICS[2:])


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of an `eval_results.json`, flat: extra evaluation sets as
    ``"<name>:<split>/<metric>"``, length strata as ``"length_q<k>/<metric>"`` and, in K-class
    reports, each class's precision, recall and F1 as ``"per_class/<name>/<metric>"``."""
    flat = {k: v for k, v in results.items() if _is_number(v)}
    for k, stratum in enumerate(results.get("length_strata", {}).get("strata", []), start=1):
        flat.update({f"length_q{k}/{m}": v for m, v in stratum.items() if _is_number(v)})
    for name, values in results.get("per_class", {}).items():
        flat.update({f"per_class/{name}/{m}": values[m] for m in ("precision", "recall", "f1")})
    for key, extra in results.get("extra_evals", {}).items():
        flat.update({f"{key}/{m}": v for m, v in flatten_results(extra).items()})
    return flat


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_results(run: PlannedRun) -> dict[str, Any]:
    return json.loads((run.workdir / RESULTS_FILE).read_text())


def run_rows(runs: Iterable[PlannedRun]) -> list[dict[str, Any]]:
    """One row per finished run: variant, seed, work directory, every scalar metric and the
    `decisiveness` of its predictions."""
    return [
        {"variant": run.variant, "seed": run.seed, "workdir": str(run.workdir)}
        | flatten_results(read_results(run))
        | decisiveness(run)
        for run in runs
        if run.done
    ]


def decisiveness(run: PlannedRun) -> dict[str, float]:
    """How decided a run's model is, which shows a loss that is lowered without learning.

    Binary runs: ``median_abs_logit`` and ``positive_rate`` (share predicted positive) on the
    eval split. K-class runs: ``median_logit_margin`` (the median of the largest logit minus the
    second largest, which is ``|z|`` for logits ``[0, z]``: near 0 where the model abstains)
    and ``top_class_rate`` (the share of examples predicted as the class predicted most often:
    near 1 where it predicts one class). Both: ``final_train_loss`` (the last logged training
    loss, in the run's own loss: comparable across seeds, not across losses).
    """
    logits = _predictions(run, "eval").logit
    if logits.ndim == 2:
        top_two = np.sort(logits, axis=1)[:, -2:]
        counts = np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1])
        out = {
            "median_logit_margin": float(np.median(top_two[:, 1] - top_two[:, 0])),
            "top_class_rate": float(counts.max() / logits.shape[0]),
        }
    else:
        out = {
            "median_abs_logit": float(np.median(np.abs(logits))),
            "positive_rate": float(np.mean(logits > 0)),
        }
    log_file = run.workdir / "metrics.jsonl"
    if log_file.exists():
        losses = [
            row["loss"]
            for row in map(json.loads, log_file.read_text().splitlines())
            if row.get("split") == "train" and "loss" in row
        ]
        if losses:
            out["final_train_loss"] = float(losses[-1])
    return out


def variant_intervals(rows: Sequence[dict[str, Any]], *, confidence: float = 0.95):
    """Per variant: ``n_seeds`` and, per metric, the mean and t-interval across seeds."""
    out: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        summary: dict[str, Any] = {"n_seeds": len(mine)}
        for metric in mine[0]:
            if metric in ("variant", "seed", "workdir"):
                continue
            values = [r.get(metric) for r in mine]
            if any(v is None or not math.isfinite(v) for v in values):
                continue
            mean, low, high = stats.t_interval(np.asarray(values, float), confidence=confidence)
            summary[metric] = {"mean": float(mean), "ci_low": float(low), "ci_high": float(high)}
        out[variant] = summary
    return out


class _Predictions(NamedTuple):
    example_id: np.ndarray
    logit: np.ndarray  # [N] binary, or [N, K] for K classes
    label: np.ndarray
    full_length: np.ndarray | None  # tokens of the whole texts; None if the file has none
    temperature: float
    class_names: tuple[str, ...] | None = None  # K-class runs only


def _predictions(run: PlannedRun, eval_set: str) -> _Predictions:
    """`run`'s predictions on `eval_set`, ordered by example id."""
    if eval_set == "eval":
        folder, results = run.workdir, read_results(run)
    else:
        folder = run.workdir / "extra_evals" / extra_eval_dir(eval_set)
        results = json.loads((folder / RESULTS_FILE).read_text())
    classes = result_classes(results)
    if (folder / PREDICTIONS_PARQUET).exists():
        table = reporting.read_predictions(folder / PREDICTIONS_PARQUET)
    else:  # restored from a study archive
        names = None if classes is None else classes.names
        table = read_csv_predictions(folder / PREDICTIONS_CSV, class_names=names)
    order = np.argsort(table["example_id"], kind="stable")
    full_length = table.get("full_length")
    return _Predictions(
        example_id=table["example_id"][order],
        logit=table["logits" if "logits" in table else "logit"][order],
        label=table["label"][order],
        full_length=None if full_length is None else full_length[order],
        temperature=results.get("temperature", 1.0),
        class_names=None if classes is None else classes.names,
    )


def read_csv_predictions(
    path: epath.Path, *, class_names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """An archived ``predictions.csv`` (`jaxsent.study.runner.archived_columns`) as arrays.

    Binary files have a float32 ``logit`` column. K-class files (`class_names` given, in class
    order) have one float32 column ``logit_<name>`` per class, returned stacked as ``logits``
    ``[N, K]``. The logits come back bit for bit as the run wrote them.

    Raises:
      ValueError: a K-class file without the column of one of `class_names`.
    """
    import pyarrow as pa
    import pyarrow.csv

    logit_columns = ["logit"] if class_names is None else [f"logit_{n}" for n in class_names]
    table = pyarrow.csv.read_csv(
        io.BytesIO(path.read_bytes()),
        convert_options=pyarrow.csv.ConvertOptions(
            column_types=dict.fromkeys(logit_columns, pa.float32())
        ),
    )
    out = {name: table.column(name).to_numpy() for name in table.column_names}
    if class_names is None:
        return out
    missing = [c for c in logit_columns if c not in out]
    if missing:
        raise ValueError(f"{path} holds no column {missing[0]!r} (classes {list(class_names)})")
    out["logits"] = np.stack([out.pop(c) for c in logit_columns], axis=1)
    return out


class _Paired(NamedTuple):
    head: dict[str, Any]  # eval_set, variant, baseline, n_seeds: the start of every row
    pairs: list[tuple[_Predictions, _Predictions]]  # (variant, baseline) per seed


def _paired_predictions(
    runs: Sequence[PlannedRun], variant: str, baseline: str, eval_set: str
) -> _Paired:
    """Predictions on `eval_set`, paired, of each seed both `variant` and `baseline` finished."""
    by_key = {(r.variant, r.seed): r for r in runs if r.done}
    seeds = sorted(s for (v, s) in by_key if v == variant and (baseline, s) in by_key)
    pairs = []
    for seed in seeds:
        mine = _predictions(by_key[variant, seed], eval_set)
        base = _predictions(by_key[baseline, seed], eval_set)
        if not np.array_equal(mine.example_id, base.example_id):
            raise ValueError(
                f"{variant} and {baseline} (seed {seed}) were evaluated on different examples "
                f"of {eval_set}"
            )
        pairs.append((mine, base))
    head = {"eval_set": eval_set, "variant": variant, "baseline": baseline, "n_seeds": len(seeds)}
    return _Paired(head, pairs)


def _side(pairs, side: int, *, scaled: bool, where) -> list[tuple[np.ndarray, np.ndarray]]:
    """(logits, labels) per seed of one side of the pairs (0: variant, 1: baseline)."""
    return [
        ((p.logit / p.temperature if scaled else p.logit)[where], p.label[where])
        for p in (pair[side] for pair in pairs)
    ]


def _compare_pairs(pairs, metrics, *, where, num_resamples: int) -> list[dict[str, Any]]:
    """Paired bootstrap rows (metric, difference, interval, p) over the examples `where` selects."""
    rows = []
    for metric in metrics:
        scaled = metric.endswith("_ts")
        result = stats.paired_bootstrap(
            metric.removesuffix("_ts"),
            _side(pairs, 0, scaled=scaled, where=where),
            _side(pairs, 1, scaled=scaled, where=where),
            num_resamples=num_resamples,
            seed=0,
        )
        rows.append(
            {
                "metric": metric,
                **{k: float(result[k]) for k in ("difference", "ci_low", "ci_high", "p_value")},
                "num_resamples": int(result["num_resamples"]),
            }
        )
    return rows


def compare(
    runs: Sequence[PlannedRun],
    variant: str,
    baseline: str,
    *,
    eval_set: str = "eval",
    metrics: Sequence[str] | None = None,
    num_resamples: int = 2000,
) -> list[dict[str, Any]]:
    """Paired bootstrap of `variant` minus `baseline` for each metric, over the seeds both have.

    The pairs share a seed, hence the training data, its order, the validation split and the
    evaluation examples; only the loss differs. Each bootstrap replicate resamples the evaluation
    examples once for every seed (they are one test set; see `jaxsent.stats.paired_bootstrap`).
    `metrics` defaults to those `summarize` compares for the runs' classes (`compared_metrics`).
    """
    paired = _paired_predictions(runs, variant, baseline, eval_set)
    if metrics is None:
        metrics = compared_metrics(study_classes(runs))
    return _compare_paired(paired, metrics=metrics, num_resamples=num_resamples)


def compare_by_length(
    runs: Sequence[PlannedRun],
    variant: str,
    baseline: str,
    *,
    eval_set: str = "eval",
    metrics: Sequence[str] = LENGTH_COMPARED_METRICS,
    num_strata: int = 4,
    num_resamples: int = 2000,
) -> list[dict[str, Any]]:
    """`compare` within each length quartile of the evaluation examples (whole-text lengths).

    The strata are `jaxsent.evaluation.length_stratum_index` of the examples' ``full_length``,
    the same as the ``length_strata`` of each run's `eval_results.json`; each row adds
    ``stratum`` (1 = shortest), its ``low``/``high`` edges and ``n_examples``. Empty when the
    prediction files hold no ``full_length`` or a stratum is empty.
    """
    paired = _paired_predictions(runs, variant, baseline, eval_set)
    return _compare_paired_by_length(
        paired, metrics=metrics, num_strata=num_strata, num_resamples=num_resamples
    )


def _compare_paired(paired: _Paired, *, metrics, num_resamples: int) -> list[dict[str, Any]]:
    if not paired.pairs:
        return []
    rows = _compare_pairs(paired.pairs, metrics, where=slice(None), num_resamples=num_resamples)
    return [{**paired.head, **row} for row in rows]


def _compare_paired_by_length(
    paired: _Paired, *, metrics, num_strata: int, num_resamples: int
) -> list[dict[str, Any]]:
    if not paired.pairs or paired.pairs[0][0].full_length is None:
        return []
    edges, stratum = length_stratum_index(paired.pairs[0][0].full_length, num_strata=num_strata)
    out = []
    for k in range(num_strata):
        where = stratum == k
        if not where.any():
            continue
        where_info = {
            "stratum": k + 1,
            "low": float(edges[k]),
            "high": float(edges[k + 1]),
            "n_examples": int(where.sum()),
        }
        rows = _compare_pairs(paired.pairs, metrics, where=where, num_resamples=num_resamples)
        out += [{**paired.head, **where_info, **row} for row in rows]
    return out


def effect_words(row: dict[str, Any]) -> str:
    """ "better"/"worse" when the interval excludes zero, else "no detectable effect"."""
    if row["ci_low"] <= 0 <= row["ci_high"]:
        return "no detectable effect"
    improved = (row["difference"] > 0) == HIGHER_IS_BETTER.get(row["metric"], False)
    return "better" if improved else "worse"


def _format_difference(row: dict[str, Any]) -> str:
    points = row["metric"] in POINTS_METRICS
    scale, unit = (100, " pt") if points else (1, "")
    d, lo, hi = (row[k] * scale for k in ("difference", "ci_low", "ci_high"))
    digits = 2 if points else 4
    return f"{d:+.{digits}f}{unit} [{lo:+.{digits}f}, {hi:+.{digits}f}], p = {row['p_value']:.3f}"


def verdict(label: str, rows: Sequence[dict[str, Any]]) -> str:
    """One line in plain words for a hypothesis from its comparison rows (one eval set)."""
    first = rows[0]
    parts, effects = [], []
    for row in rows:
        if row["metric"] not in VERDICT_METRICS:
            continue
        words = effect_words(row)
        parts.append(f"{row['metric']} {_format_difference(row)}")
        if words != "no detectable effect":
            effects.append(f"{words} {row['metric']}")
    conclusion = "; ".join(effects) if effects else "no detectable effect"
    seeds = f"{first['n_seeds']} seed" + ("s" if first["n_seeds"] != 1 else "")
    return (
        f"{label} ({first['variant']} vs {first['baseline']}, {seeds}, "
        f"{first['eval_set']}): {conclusion}. " + "; ".join(parts) + "."
    )


def summarize(
    runs: Sequence[PlannedRun],
    *,
    baseline: str,
    eval_sets: Sequence[str] = ("eval",),
    num_resamples: int = 2000,
    study: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole `summary.json`: runs, variants, comparisons (also per length quartile of the
    eval split) and verdicts; for K-class runs also ``classes`` (``names``, ``ordinal``).

    Raises:
      ValueError: finished runs of different classes (`study_classes`).
    """
    classes = study_classes(runs)
    metrics = compared_metrics(classes)
    rows = run_rows(runs)
    variants = list(dict.fromkeys(r.variant for r in runs))
    pairs = [(v, baseline) for v in variants if v != baseline]
    pairs += [(v, b) for _, v, b in HYPOTHESES if v in variants and b in variants and b != baseline]
    comparisons, by_length = [], []
    for eval_set in eval_sets:
        for variant, base in pairs:
            paired = _paired_predictions(runs, variant, base, eval_set)  # read once, used twice
            comparisons += _compare_paired(paired, metrics=metrics, num_resamples=num_resamples)
            if eval_set == "eval":
                by_length += _compare_paired_by_length(
                    paired,
                    metrics=LENGTH_COMPARED_METRICS,
                    num_strata=4,
                    num_resamples=num_resamples,
                )
    verdicts = []
    for label, variant, base in HYPOTHESES:
        for eval_set in eval_sets:
            mine = [
                c
                for c in comparisons
                if (c["variant"], c["baseline"], c["eval_set"]) == (variant, base, eval_set)
            ]
            if mine:
                verdicts.append(_verdict_row(label, mine))
        if variant in LENGTH_VERDICTS:
            # The hypothesis is about long texts: say what happened on the longest quartile too.
            mine = [c for c in by_length if (c["variant"], c["baseline"]) == (variant, base)]
            # Rows come in stratum order, so the last one is of the longest quartile.
            longest = [c for c in mine if c["stratum"] == mine[-1]["stratum"]] if mine else []
            if longest:
                first = longest[0]
                where = f"on the longest quartile ({first['low']:g}-{first['high']:g} tokens)"
                verdicts.append(_verdict_row(f"{label} {where}", longest))
    out = {"study": study or {}}
    if classes is not None:  # binary summaries keep their keys
        out["classes"] = {"names": list(classes.names), "ordinal": classes.ordinal}
    return out | {
        "runs": rows,
        "variants": variant_intervals(rows),
        "comparisons": comparisons,
        "comparisons_by_length": by_length,
        "verdicts": verdicts,
    }


def _verdict_row(label: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    first = rows[0]
    return {
        "hypothesis": label,
        "variant": first["variant"],
        "baseline": first["baseline"],
        "eval_set": first["eval_set"],
        "text": verdict(label, rows),
    }


def write_csv(rows: Sequence[dict[str, Any]], path: epath.Path) -> None:
    """The run rows as CSV, one column per key seen in any row (empty where a run lacks it)."""
    import csv
    import io

    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
