"""A finished (or partly finished) study as numbers: per-run rows, per-variant intervals across
seeds, paired comparisons against the baseline on the same evaluation examples, and verdicts.

Everything here reads the run folders the runner wrote and computes; nothing trains.
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
# Compared within each length quartile (fewer examples each: ECE's bins would be thin).
LENGTH_COMPARED_METRICS = ("accuracy", "nll")
HIGHER_IS_BETTER = {"accuracy": True}

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


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of an `eval_results.json`, flat: extra evaluation sets as
    ``"<name>:<split>/<metric>"`` and length strata as ``"length_q<k>/<metric>"``."""
    flat = {k: v for k, v in results.items() if _is_number(v)}
    for k, stratum in enumerate(results.get("length_strata", {}).get("strata", []), start=1):
        flat.update({f"length_q{k}/{m}": v for m, v in stratum.items() if _is_number(v)})
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

    ``median_abs_logit`` and ``positive_rate`` (share predicted positive) on the eval split, and
    ``final_train_loss`` (the last logged training loss, in the run's own loss: comparable
    across seeds, not across losses).
    """
    logits = _predictions(run, "eval").logit
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
    logit: np.ndarray
    label: np.ndarray
    full_length: np.ndarray | None  # tokens of the whole texts; None if the file has none
    temperature: float


def _predictions(run: PlannedRun, eval_set: str) -> _Predictions:
    """`run`'s predictions on `eval_set`, ordered by example id."""
    if eval_set == "eval":
        folder, results = run.workdir, read_results(run)
    else:
        folder = run.workdir / "extra_evals" / extra_eval_dir(eval_set)
        results = json.loads((folder / RESULTS_FILE).read_text())
    if (folder / PREDICTIONS_PARQUET).exists():
        table = reporting.read_predictions(folder / PREDICTIONS_PARQUET)
    else:  # restored from a study archive
        table = _read_csv_predictions(folder / PREDICTIONS_CSV)
    order = np.argsort(table["example_id"], kind="stable")
    full_length = table.get("full_length")
    return _Predictions(
        example_id=table["example_id"][order],
        logit=table["logit"][order],
        label=table["label"][order],
        full_length=None if full_length is None else full_length[order],
        temperature=results.get("temperature", 1.0),
    )


def _read_csv_predictions(path: epath.Path) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.csv

    table = pyarrow.csv.read_csv(
        io.BytesIO(path.read_bytes()),
        convert_options=pyarrow.csv.ConvertOptions(column_types={"logit": pa.float32()}),
    )
    return {name: table.column(name).to_numpy() for name in table.column_names}


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
    metrics: Sequence[str] = COMPARED_METRICS,
    num_resamples: int = 2000,
) -> list[dict[str, Any]]:
    """Paired bootstrap of `variant` minus `baseline` for each metric, over the seeds both have.

    The pairs share a seed, hence the training data, its order, the validation split and the
    evaluation examples; only the loss differs. Each bootstrap replicate resamples the evaluation
    examples once for every seed (they are one test set; see `jaxsent.stats.paired_bootstrap`).
    """
    paired = _paired_predictions(runs, variant, baseline, eval_set)
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
    scale, unit = (100, " pt") if row["metric"] == "accuracy" else (1, "")
    d, lo, hi = (row[k] * scale for k in ("difference", "ci_low", "ci_high"))
    digits = 2 if row["metric"] == "accuracy" else 4
    return f"{d:+.{digits}f}{unit} [{lo:+.{digits}f}, {hi:+.{digits}f}], p = {row['p_value']:.3f}"


def verdict(label: str, rows: Sequence[dict[str, Any]]) -> str:
    """One line in plain words for a hypothesis from its comparison rows (one eval set)."""
    first = rows[0]
    parts, effects = [], []
    for row in rows:
        if row["metric"] not in ("accuracy", "ece", "nll", "ece_ts"):
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
    eval split) and verdicts."""
    rows = run_rows(runs)
    variants = list(dict.fromkeys(r.variant for r in runs))
    pairs = [(v, baseline) for v in variants if v != baseline]
    pairs += [(v, b) for _, v, b in HYPOTHESES if v in variants and b in variants and b != baseline]
    comparisons, by_length = [], []
    for eval_set in eval_sets:
        for variant, base in pairs:
            paired = _paired_predictions(runs, variant, base, eval_set)  # read once, used twice
            comparisons += _compare_paired(
                paired, metrics=COMPARED_METRICS, num_resamples=num_resamples
            )
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
    return {
        "study": study or {},
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
