"""The docs/tpu.md plans: `python -m train.plan` for BERT-base/large at 512 tokens on TPU slices.

    python bench/plan_tpu_table.py run [ROW_ID ...]   # compile the rows not yet in docs/tpu/
    python bench/plan_tpu_table.py table              # the markdown table of what is there

Each row is one `python -m train.plan` command (printed by `table`); its JSON goes to
docs/tpu/<row id>.json and its stdout to docs/tpu/<row id>.txt. Rows run one after the other, in
the order below (scan_layers first: one layer body compiles fastest). A row without its JSON is
listed as not measured yet, with its command.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "tpu"
CONFIG = "configs/bert_base_imdb.py"  # bfloat16 compute, 512 tokens, pooling cls, AdamW

# id -> (model, topology, strategy, mesh.model, remat, scan_layers, extra flags)
ROWS = {
    "large-v5e8-fsdp-full-scan": (
        "bert-large",
        "v5e:2x4",
        "fsdp",
        1,
        "full",
        True,
        ["--max_batch"],
    ),
    "large-v5e8-dp-none-scan": ("bert-large", "v5e:2x4", "dp", 1, "none", True, ["--max_batch"]),
    "base-v5e8-dp-none-scan": ("bert-base", "v5e:2x4", "dp", 1, "none", True, ["--max_batch"]),
    "large-v5e8-fsdp-dots-scan": (
        "bert-large",
        "v5e:2x4",
        "fsdp",
        1,
        "dots",
        True,
        ["--max_batch"],
    ),
    "large-v5e8-fsdp-none-scan": (
        "bert-large",
        "v5e:2x4",
        "fsdp",
        1,
        "none",
        True,
        ["--max_batch"],
    ),
    "large-v5e256-dp-full-scan": ("bert-large", "v5e:16x16", "dp", 1, "full", True, []),
    "large-v5e256-fsdp-full-scan": ("bert-large", "v5e:16x16", "fsdp", 1, "full", True, []),
    "large-v5e256-tp-full-scan": ("bert-large", "v5e:16x16", "tp", 2, "full", True, []),
    "large-v5p8-fsdp-full-scan": (
        "bert-large",
        "v5p:2x2x1",
        "fsdp",
        1,
        "full",
        True,
        [],
    ),
    "large-v6e8-fsdp-full-scan": (
        "bert-large",
        "v6e:2x4",
        "fsdp",
        1,
        "full",
        True,
        [],
    ),
    "base-v5e8-fsdp-none-scan": ("bert-base", "v5e:2x4", "fsdp", 1, "none", True, ["--max_batch"]),
    "base-v5e8-tp-none-scan": ("bert-base", "v5e:2x4", "tp", 2, "none", True, ["--max_batch"]),
    "large-v5e8-tp-full-scan": ("bert-large", "v5e:2x4", "tp", 2, "full", True, []),
    "large-v5e8-dp-full-scan": ("bert-large", "v5e:2x4", "dp", 1, "full", True, []),
    "large-v5e8-fsdp-full-unrolled": ("bert-large", "v5e:2x4", "fsdp", 1, "full", False, []),
    "base-v5e8-dp-none-unrolled": ("bert-base", "v5e:2x4", "dp", 1, "none", False, []),
}


def command(row_id: str) -> list[str]:
    model, topology, strategy, model_axis, remat, scan, extra = ROWS[row_id]
    data_axis = 1
    for size in topology.split(":")[1].split("x"):
        data_axis *= int(size)
    data_axis //= model_axis
    batch = max(256, data_axis)  # the global batch the goal names; one per chip at least
    return [
        "python",
        "-m",
        "train.plan",
        "--config",
        CONFIG,
        f"--config.model.name={model}",
        f"--topology={topology}",
        f"--config.mesh.strategy={strategy}",
        f"--config.mesh.model={model_axis}",
        f"--config.model.remat={remat}",
        f"--config.model.scan_layers={scan}",
        f"--config.train.global_batch_size={batch}",
        f"--config.train.eval_batch_size={batch}",
        *extra,
        f"--output=docs/tpu/{row_id}.json",
    ]


def run(row_ids: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for row_id in row_ids or list(ROWS):
        if (OUT / f"{row_id}.json").exists():
            continue
        cmd = command(row_id)
        cmd[0] = sys.executable
        print(f"{row_id}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
        (OUT / f"{row_id}.txt").write_text(result.stdout)
        print(f"  exit {result.returncode} after {seconds:.0f} s: {lines[-1] if lines else ''}")
        if result.returncode == 2:
            print(result.stderr[-2000:])


def _gib(n) -> str:
    return "?" if n is None else f"{n / 2**30:.1f}"


def table() -> str:
    head = (
        "| model | slice | strategy | remat | scan | max batch (per chip) | peak GiB/chip | "
        "compile s (train) | collectives per train step | MFU bound |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    lines, missing = [head], []
    for row_id, (model, topology, strategy, _, remat, scan, _extra) in ROWS.items():
        path = OUT / f"{row_id}.json"
        if not path.exists():
            missing.append(row_id)
            continue
        plan = json.loads(path.read_text())
        train = plan["shapes"][0]
        data_axis = plan["chips"] // (2 if strategy == "tp" else 1)
        if "max_batch" in plan:
            batch = plan["max_batch"]
            shown = f"{batch} ({batch / data_axis:g})" if batch else "none fits"
        else:
            shown = (
                f"{train['global_batch']} planned, {'fits' if train['fits'] else 'does NOT fit'}"
            )
        colls = "; ".join(
            f"{k} {v['count']} x, {v['bytes'] / 2**20:.0f} MiB"
            for k, v in train["collectives"].items()
        )
        mfu = "?" if train["mfu_bound"] is None else f"{train['mfu_bound']:.2f}"
        lines.append(
            f"| {model} | {topology} | {strategy} | {remat} | {scan} | {shown} | "
            f"{_gib(train['bytes']['peak'])} | {train['compile_seconds']:.0f} | "
            f"{colls or 'none'} | {mfu} |"
        )
    out = "\n".join(lines)
    if missing:
        out += "\n\nNot measured yet (run the command to add the row):\n\n"
        out += "\n".join(f"- `{' '.join(command(r))}`" for r in missing)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run(sys.argv[2:])
    elif sys.argv[1:2] == ["table"]:
        print(table())
    else:
        sys.exit(__doc__)
