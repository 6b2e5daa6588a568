"""The batch search of ``train.plan --max_batch``: compiles until a batch that fits under the
memory limit sits next to a larger one that does not (`find_max_batch` says what that guarantees).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from jaxsent.training.plan.planner import Planner, ShapePlan

__all__ = ["HEADROOM_FRACTION", "find_max_batch", "search_max_batch"]

# A plan with --max_batch leaves this fraction of HBM free at the batch it picks.
HEADROOM_FRACTION = 0.10


def _peak(plans: list[ShapePlan]) -> float | None:
    peaks = [p.bytes["peak"] for p in plans]
    return None if any(p is None for p in peaks) else max(peaks)


def find_max_batch(
    measure: Callable[[int], list[ShapePlan]],
    *,
    multiple: int,
    start: int,
    limit_bytes: float,
    largest: int = 1 << 20,
) -> tuple[int, dict[int, list[ShapePlan]]]:
    """A multiple of ``multiple`` that fits under ``limit_bytes`` and whose next multiple does not.

    A batch fits when every plan ``measure(batch)`` returns fits in HBM with a peak of at most
    ``limit_bytes``. After ``start`` (rounded to a multiple) and its double (or half), a secant
    through their peaks (memory grows about linearly with the batch) guesses the boundary, and
    the guess and its neighbour usually bracket it; then the search doubles until a batch does
    not fit, and bisects between the largest batch that fits and the smallest larger one that
    does not until they are neighbours. Every probe is a compile.

    What it guarantees: the batch ``b`` it returns fits, and ``b + multiple`` was probed and does
    not fit (unless ``b`` is ``largest`` rounded down); so does every other probed batch above
    ``b``. It does not guarantee that ``b`` is the largest batch that fits: the compiler's memory
    is not monotone in the batch (BERT-base on v5e-8 without remat: 436 sequences take 14.53 GiB
    per chip, 496 take 14.46 GiB; docs/tpu/base-v5e8-tp-none-unrolled.txt), so an unprobed
    batch above ``b + multiple`` may fit.

    Args:
      measure: the plans of one batch (a compile per shape).
      multiple: every probed batch is a multiple of this.
      start: the first batch to probe (rounded down to a multiple, at least ``multiple``).
      limit_bytes: the most a chip may hold at the batch returned.
      largest: no batch above this is probed.

    Returns:
      ``(batch, probes)``: the batch (0 when even ``multiple`` does not fit) and the plans of every
      batch probed.
    """
    probes: dict[int, list[ShapePlan]] = {}
    top = max(1, largest // multiple)
    fitting: set[int] = set()  # in units of `multiple`

    def probe(k: int) -> bool:
        if k not in probes:
            probes[k] = measure(k * multiple)
            if all(p.fits and p.bytes["peak"] <= limit_bytes for p in probes[k]):
                fitting.add(k)
        return k in fitting

    k0 = min(max(1, start // multiple), top)
    k1 = min(2 * k0, top) if probe(k0) else max(1, k0 // 2)
    probe(k1)
    p0, p1 = _peak(probes[k0]), _peak(probes[k1])
    if p0 is not None and p1 is not None and p0 != p1 and k0 != k1:
        slope = (p1 - p0) / (k1 - k0)
        k = int(k0 + (limit_bytes - p0) / slope) if slope > 0 else top
        k = min(max(1, k), top)
        if probe(k) and k < top:
            probe(k + 1)
        elif k > 1:
            probe(k - 1)
    while True:
        good = max(fitting, default=0)
        above = min((k for k in probes if k > good and k not in fitting), default=None)
        if above is None:  # nothing above the best fit has failed yet
            if good >= top:
                break
            probe(min(2 * good, top))
        elif above == good + 1:
            break
        else:
            probe((good + above) // 2)
    good = max(fitting, default=0)
    return good * multiple, {k * multiple: plans for k, plans in sorted(probes.items())}


def search_max_batch(
    planner: Planner,
    *,
    lengths: Iterable[int],
    limit_bytes: float,
    on_probe: Callable[[ShapePlan], None] | None = None,
) -> tuple[int, dict[int, list[ShapePlan]]]:
    """`find_max_batch` over the run's own train step: what ``train.plan --max_batch`` does.

    Probes only multiples of `Planner.batch_multiple` (the data axis, the host count and
    ``train.micro_batch_size``), each compiled as the run's program at that batch: micro-batches
    of ``train.micro_batch_size`` rows, ``batch // micro_batch_size`` of them. A batch is probed
    at each length, longest first, until one does not fit.

    Args:
      planner: the run's `Planner`.
      lengths: the padded lengths to fit (`bucket_shapes`).
      limit_bytes: the most a chip may hold (HBM less the headroom).
      on_probe: called with each compiled shape (e.g. to print it).

    Returns:
      As `find_max_batch`.
    """
    lengths = sorted(lengths, reverse=True)

    def measure(batch: int) -> list[ShapePlan]:
        plans = []
        for length in lengths:
            shape = planner.compile_shape("train", batch, length)
            plans.append(shape)
            if on_probe is not None:
                on_probe(shape)
            if not shape.fits or shape.bytes["peak"] > limit_bytes:
                break  # a shorter length cannot rescue this batch
        return plans

    return find_max_batch(
        measure,
        multiple=planner.batch_multiple,
        start=int(planner.config.train.global_batch_size),
        limit_bytes=limit_bytes,
    )
