"""A plan as text: byte sizes and the per-shape table ``train.plan`` prints."""

from __future__ import annotations

from collections.abc import Iterable

from jaxsent.training.plan.chips import GiB
from jaxsent.training.plan.planner import ShapePlan

__all__ = ["COLUMNS", "describe_bytes", "summary_rows", "summary_table"]


def describe_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / 2**20:.1f} MiB"


def summary_rows(plans: Iterable[ShapePlan]) -> list[list[str]]:
    """The stdout table's rows, one per shape."""
    rows = []
    for p in plans:
        b = p.bytes
        colls = ", ".join(
            f"{k} {v['count']}x {describe_bytes(v['bytes'])}" for k, v in p.collectives.items()
        )
        rows.append(
            [
                p.name + (f", {p.micro_batches} micro-batches" if p.micro_batches > 1 else ""),
                describe_bytes(b["arguments"]),
                describe_bytes(b["temporaries"]),
                describe_bytes(b["peak"]),
                "yes" if p.fits else "NO",
                describe_bytes(None if b["peak"] is None else p.hbm_bytes - b["peak"]),
                "?" if p.flops is None else f"{p.flops:.3g}",
                f"{p.model_flops:.3g}",
                "?" if p.roofline_seconds is None else f"{p.roofline_seconds * 1e3:.1f} ms",
                "?" if p.mfu_bound is None else f"{p.mfu_bound:.2g}",
                f"{p.compile_seconds:.0f} s",
                colls or "none",
            ]
        )
    return rows


#: The columns of `summary_rows` and `summary_table`.
COLUMNS = (
    "shape",
    "arguments",
    "temporaries",
    "peak",
    "fits",
    "headroom",
    "flops/chip",
    "model flops",
    "roofline >=",
    "MFU <=",
    "compile",
    "collectives (per step)",
)


def summary_table(plans: Iterable[ShapePlan]) -> str:
    """`summary_rows` under `COLUMNS`, each column as wide as its widest cell."""
    rows = summary_rows(plans)
    widths = [max(len(r[i]) for r in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
