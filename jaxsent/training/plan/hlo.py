"""Reading an optimised HLO module's text: its computations, loops and collectives.

The loop trip counts (`_trip_count`) serve both the collective counts here and the loop costing
of `jaxsent.training.plan.costing`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable

__all__ = ["COLLECTIVE_KINDS", "collectives"]

COLLECTIVE_KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+([a-z][\w\-]*)\(")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_CALLED = re.compile(
    r"\b(body|condition|to_apply|calls|branch_computations)=(?:\{([^}]*)\}|(%?[\w.\-]+))"
)
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
    """An HLO module's computations (name -> instruction lines) and the name of its ENTRY."""
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match and "=" not in line.split("{")[0].split("(")[0]:
                current = match.group(1)
                computations[current] = []
                if line.lstrip().startswith("ENTRY"):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        computations[current].append(line)
    return computations, entry


def _called(line: str) -> dict[str, list[str]]:
    """The computations an instruction calls, by role (``body``, ``condition``, ``calls``, ...)."""
    return {
        role: [n.strip().lstrip("%") for n in (group or single).split(",") if n.strip()]
        for role, group, single in _CALLED.findall(line)
    }


_NAMED = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\(")
_COMMENT = re.compile(r"/\*.*?\*/")


@dataclasses.dataclass(frozen=True)
class _Instruction:
    """One HLO instruction line: its name, opcode, operand names and attributes."""

    name: str
    opcode: str
    operands: tuple[str, ...]
    attributes: str
    root: bool


def _instruction(line: str) -> _Instruction | None:
    match = _NAMED.match(line)
    if match is None:
        return None
    start = match.end()
    depth = 1
    for end in range(start, len(line)):
        depth += {"(": 1, ")": -1}.get(line[end], 0)
        if depth == 0:
            break
    else:
        return None
    operands = []
    for part in _COMMENT.sub("", line[start:end]).split(","):
        words = part.split()
        if words:
            operands.append(words[-1].lstrip("%"))
    return _Instruction(
        match.group(2), match.group(4), tuple(operands), line[end + 1 :], bool(match.group(1))
    )


def _instructions(lines: Iterable[str]) -> dict[str, _Instruction]:
    found = {}
    for line in lines:
        if (inst := _instruction(line)) is not None:
            found[inst.name] = inst
    return found


def _constant(name: str, instructions: dict[str, _Instruction]) -> int | None:
    """The integer a scalar resolves to through copies and converts, if it is a constant."""
    inst = instructions.get(name)
    while inst is not None and inst.opcode in ("copy", "convert", "bitcast") and inst.operands:
        inst = instructions.get(inst.operands[0])
    if inst is None or inst.opcode != "constant" or len(inst.operands) != 1:
        return None
    try:
        return int(inst.operands[0])
    except ValueError:
        return None


def _tuple_index(name: str, instructions: dict[str, _Instruction]) -> int | None:
    """k when ``name`` is element k of the computation's (tuple) parameter."""
    inst = instructions.get(name)
    if inst is None or inst.opcode != "get-tuple-element" or not inst.operands:
        return None
    source = instructions.get(inst.operands[0])
    match = re.search(r"\bindex=(\d+)", inst.attributes)
    if source is None or source.opcode != "parameter" or match is None:
        return None
    return int(match.group(1))


def _trip_count(
    line: str,
    computations: dict[str, list[str]],
    instructions: Callable[[str], dict[str, _Instruction]],
    caller: str,
) -> int:
    """A while loop's iterations: XLA's known_trip_count, else what its induction variable says.

    The TPU compiler's loops carry no known_trip_count. Their condition compares a counter (an
    element of the loop's tuple) with a constant bound, ``i < N``; the body adds a constant
    step to it, and the loop's initial tuple (in ``caller``) gives its start: ``ceil((N - start)
    / step)`` iterations. jax's scan loops count 0, 1, ..., N - 1 (s32); the TPU's windowed
    einsums (FSDP's collective matmuls) count 0, 2, ... below 4 (u32). A start or step that is
    not a constant is taken as 0 or 1; a condition of another form counts once.

    Args:
      line: the ``while`` instruction.
      computations: the module's computations (`_computations`).
      instructions: a computation's instructions by name (`_instructions`, cached).
      caller: the computation holding the ``while``.
    """
    if match := _TRIP_COUNT.search(line):
        return int(match.group(1))
    called = _called(line)
    if len(called.get("condition", ())) != 1 or len(called.get("body", ())) != 1:
        return 1
    condition = instructions(called["condition"][0])
    root = next((i for i in condition.values() if i.root), None)
    direction = re.search(r"\bdirection=(\w+)", root.attributes) if root else None
    if root is None or root.opcode != "compare" or len(root.operands) != 2 or not direction:
        return 1
    op = direction.group(1)
    left, right = root.operands
    index, bound = _tuple_index(left, condition), _constant(right, condition)
    if index is None:  # N > i
        index, bound = _tuple_index(right, condition), _constant(left, condition)
        op = {"GT": "LT", "GE": "LE"}.get(op, "")
    if index is None or bound is None or op not in ("LT", "LE"):
        return 1
    body = instructions(called["body"][0])
    step = None
    result = next((i for i in body.values() if i.root), None)
    if result is not None and result.opcode == "tuple" and index < len(result.operands):
        update = body.get(result.operands[index])
        if update is not None and update.opcode == "add" and len(update.operands) == 2:
            a, b = update.operands
            if _tuple_index(a, body) == index:
                step = _constant(b, body)
            elif _tuple_index(b, body) == index:
                step = _constant(a, body)
    start = None
    loop = _instruction(line)
    outer = instructions(caller)
    initial = outer.get(loop.operands[0]) if loop is not None and loop.operands else None
    if initial is not None and initial.opcode == "tuple" and index < len(initial.operands):
        start = _constant(initial.operands[index], outer)
    start, step = start or 0, step or 1
    if step < 0:
        return 1
    span = bound - start + (1 if op == "LE" else 0)
    return max(0, -(-span // step))


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Collectives of an optimised HLO module, by kind: ``{kind: {"count", "bytes"}}``.

    Counts are executions per step: an op inside a while loop (the encoder's scan under
    ``scan_layers``, a TPU windowed einsum) counts once per iteration (`_trip_count`). Bytes
    are the per-chip result size (for asynchronous pairs, the ``-done`` result; the ``-start``
    is counted).
    """
    computations, entry = _computations(hlo_text)
    instructions = functools.cache(lambda name: _instructions(computations.get(name, ())))

    @functools.cache
    def counts(name: str) -> tuple[tuple[str, int, int], ...]:
        found: dict[str, list[int]] = {}
        for line in computations.get(name, ()):
            match = _INSTRUCTION.match(line)
            if match is None:
                continue
            shape, opcode = match.groups()
            for kind in COLLECTIVE_KINDS:
                if opcode in (kind, f"{kind}-start"):
                    found.setdefault(kind, [0, 0])[0] += 1
                if opcode in (kind, f"{kind}-done"):
                    found.setdefault(kind, [0, 0])[1] += _shape_bytes(shape)
            if opcode in ("async-done", "async-update"):
                continue  # the same computation as its async-start
            for role, names in _called(line).items():
                times = _trip_count(line, computations, instructions, name) if role == "body" else 1
                for called in names:
                    for kind, count, size in counts(called):
                        entry_ = found.setdefault(kind, [0, 0])
                        entry_[0] += times * count
                        entry_[1] += times * size
        return tuple((kind, c, b) for kind, (c, b) in sorted(found.items()))

    if entry is None:
        return {}
    return {kind: {"count": c, "bytes": b} for kind, c, b in counts(entry) if c or b}
