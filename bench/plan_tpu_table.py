"""The docs/tpu.md plans: `python -m train.plan` for BERT-base/large (512 tokens) and
ModernBERT-base (1,536 tokens) on TPU slices.

    python bench/plan_tpu_table.py run [ROW_ID ...]   # compile the rows not yet in docs/tpu/
    python bench/plan_tpu_table.py table              # the markdown table of what is there
    python bench/plan_tpu_table.py recost [ROW_ID ...] # redo rows' FLOPs, bytes, collectives
    GPU_PLAN_PYTHON=<venv with jaxsent[gpu-plan]>/bin/python python bench/plan_tpu_table.py run

Each row is one `python -m train.plan` command (printed by `table`); its JSON goes to
docs/tpu/<row id>.json and its stdout to docs/tpu/<row id>.txt. Rows run one after the other, in
the order of ROWS. A row without its JSON is listed as not measured yet, with its command.

`recost` compiles a row's shapes again at the batch its JSON reports (no --max_batch search) and
takes their FLOPs, bytes accessed, roofline, MFU bound and collective counts from the new plan,
after checking that the compiler produced the same program (equal per-chip bytes, the same kinds
of collective). It was written when the plan learnt to count every iteration of a loop
(`jaxsent.training.plan.step_cost`): first the encoder's scan under scan_layers (costed as one
layer before), then the TPU compiler's windowed-einsum loops, whose counter the plan could not
read (FSDP's collective matmuls on v5e-8 and v6e-8, in unrolled steps too). Without row ids it
redoes every row.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "tpu"
# bfloat16 compute, AdamW. BERT at 512 tokens, pooling cls (global batch 256, the goal's);
# ModernBERT at the seed recipe's 1,536 tokens (full-length reviews), mean pooling, batch 32.
CONFIGS = {
    "bert": ("configs/bert_base_imdb.py", 256),
    "modernbert": ("configs/modernbert_base_imdb.py", 32),
}
V5E8, V5E256, V5P8, V6E8 = "v5e:2x4", "v5e:16x16", "v5p:2x2x1", "v6e:2x4"
V4_8 = "v4:2x2x1"  # v4-8: 4 chips of 2 TensorCores, each chip one (megacore) device
H100X8, H200X8 = "h100:8", "h200:8"  # one host of 8 GPUs
MODEL_AXIS = {"dp": 1, "fsdp": 1, "tp": 2}
SHORT = {
    V5E8: "v5e8",
    V5E256: "v5e256",
    V5P8: "v5p8",
    V6E8: "v6e8",
    V4_8: "v4-8",
    H100X8: "h100x8",
    H200X8: "h200x8",
}


def _row(model, topology, strategy, remat, scan, max_batch):
    name = {"bert-base": "base", "bert-large": "large", "modernbert-base": "modernbert"}[model]
    layout = "scan" if scan else "unrolled"
    row_id = f"{name}-{SHORT[topology]}-{strategy}-{remat}-{layout}"
    return row_id, (model, topology, strategy, MODEL_AXIS[strategy], remat, scan, max_batch)


# In the order `run` compiles them: the recommended layout (remat=full, scan_layers) first, on
# v5e-8 (the smallest HBM) with --max_batch, then the other chips at the planned batch, then the
# layouts that trade memory for speed. ModernBERT's rows were planned unrolled (before it had
# scan_layers).
ROWS = dict(
    _row(*spec)
    for spec in [
        ("bert-large", V5E8, "fsdp", "full", True, True),
        ("bert-large", V5E256, "fsdp", "full", True, False),
        ("bert-large", V5P8, "fsdp", "full", True, False),
        ("bert-large", V6E8, "fsdp", "full", True, False),
        ("bert-large", V4_8, "fsdp", "full", True, False),
        ("bert-large", V5E256, "dp", "full", True, False),
        ("bert-large", V5E256, "tp", "full", True, False),
        ("bert-large", V5E8, "tp", "full", True, False),
        ("bert-large", V5E8, "dp", "full", True, False),
        ("bert-base", V5E8, "fsdp", "full", True, True),
        ("bert-base", V5E8, "dp", "full", True, True),
        ("bert-base", V5E8, "tp", "full", True, True),
        ("modernbert-base", V5E8, "fsdp", "full", False, True),
        ("bert-base", V5E8, "fsdp", "none", False, True),
        ("bert-base", V5E8, "dp", "none", False, True),
        ("bert-base", V5E8, "tp", "none", False, True),
        ("bert-large", V5E8, "fsdp", "dots", True, True),
        ("bert-large", V5E8, "fsdp", "none", False, True),
        ("bert-base", V5E256, "fsdp", "full", True, False),
        ("bert-base", V5P8, "fsdp", "full", True, False),
        ("bert-base", V6E8, "fsdp", "full", True, False),
        ("bert-base", V4_8, "fsdp", "full", True, False),
        ("modernbert-base", V5E8, "dp", "full", False, True),
        ("modernbert-base", V5E8, "tp", "full", False, True),
        # GPUs (jax's CUDA plugin, the gpu-plan extra; run with GPU_PLAN_PYTHON set to its python)
        ("bert-large", H100X8, "fsdp", "full", True, True),
        ("bert-large", H200X8, "fsdp", "full", True, False),
        ("bert-base", H100X8, "dp", "none", False, True),
        ("modernbert-base", H100X8, "fsdp", "full", False, True),
    ]
)


def command(row_id: str) -> list[str]:
    model, topology, strategy, model_axis, remat, scan, max_batch = ROWS[row_id]
    config, planned = CONFIGS[model.split("-")[0]]
    data_axis = 1
    for size in topology.split(":")[1].split("x"):
        data_axis *= int(size)
    data_axis //= model_axis
    batch = max(planned, data_axis)  # at least one sequence per chip
    return [
        "python",
        "-m",
        "train.plan",
        "--config",
        config,
        f"--config.model.name={model}",
        f"--topology={topology}",
        f"--config.mesh.strategy={strategy}",
        f"--config.mesh.model={model_axis}",
        f"--config.model.remat={remat}",
        f"--config.model.scan_layers={scan}",
        f"--config.train.global_batch_size={batch}",
        f"--config.train.eval_batch_size={batch}",
        *(["--max_batch"] if max_batch else []),
        f"--output=docs/tpu/{row_id}.json",
    ]


def run(row_ids: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for row_id in row_ids or list(ROWS):
        if (OUT / f"{row_id}.json").exists():
            continue
        cmd = command(row_id)
        gpu = ROWS[row_id][1].startswith("h")
        cmd[0] = os.environ.get("GPU_PLAN_PYTHON", sys.executable) if gpu else sys.executable
        print(f"{row_id}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
        (OUT / f"{row_id}.txt").write_text(result.stdout)
        print(f"  exit {result.returncode} after {seconds:.0f} s: {lines[-1] if lines else ''}")
        if result.returncode == 2:
            print(result.stderr[-2000:])


COST_FIELDS = ("flops", "bytes_accessed", "roofline_seconds", "mfu_bound", "collectives")


def recost(row_ids: list[str]) -> None:
    for row_id in row_ids or list(ROWS):
        path = OUT / f"{row_id}.json"
        if not path.exists():
            continue
        plan = json.loads(path.read_text())
        train = plan["shapes"][0]
        cmd = [a for a in command(row_id) if a != "--max_batch" and not a.startswith("--output")]
        cmd = [
            f"--config.train.global_batch_size={train['global_batch']}"
            if a.startswith("--config.train.global_batch_size=")
            else a
            for a in cmd
        ]
        gpu = ROWS[row_id][1].startswith("h")
        cmd[0] = os.environ.get("GPU_PLAN_PYTHON", sys.executable) if gpu else sys.executable
        with tempfile.TemporaryDirectory() as tmp:
            output = Path(tmp) / "plan.json"
            print(f"{row_id}: {' '.join(cmd[1:])}", flush=True)
            result = subprocess.run(
                [*cmd, f"--output={output}"], cwd=ROOT, capture_output=True, text=True
            )
            if result.returncode != 0 or not output.exists():
                print(f"  exit {result.returncode}: {result.stderr[-2000:]}")
                continue
            new = json.loads(output.read_text())
        old_shapes = {(s["step"], s["global_batch"], s["length"]): s for s in plan["shapes"]}
        for shape in new["shapes"]:
            old = old_shapes[(shape["step"], shape["global_batch"], shape["length"])]
            same = old["bytes"] == shape["bytes"] and set(old["collectives"]) == set(
                shape["collectives"]
            )
            if not same:
                sys.exit(f"{row_id}: {shape['step']} compiled to another program; row not changed")
            before = old["mfu_bound"]
            old.update({field: shape[field] for field in COST_FIELDS})
            print(f"  {shape['step']}: MFU bound {before:.2f} -> {shape['mfu_bound']:.2f}")
        path.write_text(json.dumps(plan, indent=2) + "\n")
        with (OUT / f"{row_id}.txt").open("a") as txt:
            txt.write(f"\nrecosted, every loop iteration counted ({' '.join(cmd[1:])}):\n")
            txt.write(result.stdout)


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
    elif sys.argv[1:2] == ["recost"]:
        recost(sys.argv[2:])
    elif sys.argv[1:2] == ["table"]:
        print(table())
    else:
        sys.exit(__doc__)
