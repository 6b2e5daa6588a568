"""Class labels: binary spellings and their conversion to 0/1, and K-class label sets.

`normalize_label` is the binary rule every two-class run uses. `ClassLabels` names the classes
of any run (`BINARY` for two) and encodes raw labels (names or integers) as class ids;
`infer_class_labels` finds a training split's classes when the config does not name them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Lower-cased, stripped string spellings accepted for each class.
LABEL_NAMES: dict[str, int] = {
    "0": 0,
    "neg": 0,
    "negative": 0,
    "1": 1,
    "pos": 1,
    "positive": 1,
}


def normalize_label(value) -> int | None:
    """Converts one raw label to 0 or 1, or returns None if it is not a recognisable label.

    Accepted: the integers 0 and 1 (also as bools, numpy integers and integral floats) and the
    strings in `LABEL_NAMES` (case and surrounding whitespace ignored). Everything else
    (None, NaN, -1, 2, 0.5, "maybe", ...) is rejected.

    Args:
      value: a raw label value from a data file.

    Returns:
      0, 1, or None.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return LABEL_NAMES.get(value.strip().lower())
    if isinstance(value, numbers.Integral):  # includes bool and numpy integers
        return int(value) if int(value) in (0, 1) else None
    if isinstance(value, numbers.Real):
        if math.isnan(value) or value not in (0.0, 1.0):
            return None
        return int(value)
    return None


@dataclasses.dataclass(frozen=True)
class ClassLabels:
    """A run's classes: their names in class-id order, and how raw labels map to the ids.

    A raw label is a class's name (a string, matched exactly after stripping, else ignoring
    case) or an integer: with ``values`` set, the class whose value it is (``values[i]`` is
    class ``i``'s integer in the data, e.g. stars 1..5); else the class id itself, in
    ``[0, K)``. :data:`BINARY` (two classes) also accepts the spellings of `LABEL_NAMES`, as
    jaxsent's binary runs always have.

    Attributes:
      names: the class names, ``names[i]`` of class ``i``; at least two, distinct.
      values: the integers that stand for the classes in the data, or None (the ids).
      ordinal: the classes are ordered (stars, very negative .. very positive): the ordinal
        metrics (mean absolute error in classes, accuracy within one class) apply.
    """

    names: tuple[str, ...]
    values: tuple[int, ...] | None = None
    ordinal: bool = False

    def __post_init__(self):
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if len(names) < 2:
            raise ValueError(f"label names must name at least two classes, got {list(names)}")
        if not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"label names must be non-empty strings, got {list(names)}")
        if len({n.strip().casefold() for n in names}) != len(names):
            raise ValueError(f"label names must be distinct (ignoring case), got {list(names)}")
        if self.values is not None:
            values = tuple(int(v) for v in self.values)
            if len(values) != len(names) or len(set(values)) != len(values):
                raise ValueError(
                    f"label values {list(values)} must be distinct, one per class {list(names)}"
                )
            object.__setattr__(self, "values", values)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def encode(self, value: Any) -> int | None:
        """The class id of one raw label, or None when it names no class."""
        if self is BINARY or self == BINARY:
            return normalize_label(value)
        if isinstance(value, str):
            text = value.strip()
            for i, name in enumerate(self.names):
                if text == name.strip():
                    return i
            folded = text.casefold()
            for i, name in enumerate(self.names):
                if folded == name.strip().casefold():
                    return i
            return None
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
            if math.isnan(value) or not float(value).is_integer():
                return None
            value = int(value)
        if not isinstance(value, numbers.Integral):
            return None
        value = int(value)
        if self.values is not None:
            return self.values.index(value) if value in self.values else None
        return value if 0 <= value < len(self.names) else None

    def describe(self) -> str:
        """``0 'very negative', 1 'negative', ...`` (with the data's integers when they differ)."""
        shown = []
        for i, name in enumerate(self.names):
            value = (
                "" if self.values is None or self.values[i] == i else f" (label {self.values[i]})"
            )
            shown.append(f"{i} {name!r}{value}")
        return ", ".join(shown)

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "values": self.values and list(self.values),
            "ordinal": self.ordinal,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClassLabels:
        values = data.get("values")
        return cls(
            tuple(data["names"]),
            None if values is None else tuple(values),
            bool(data.get("ordinal", False)),
        )


#: The binary classes of every two-class run: 0 negative, 1 positive (`LABEL_NAMES` spellings).
BINARY = ClassLabels(("negative", "positive"))


def infer_class_labels(
    raw_labels: Iterable[Any], *, names: Sequence[str] | None = None, ordinal: bool = False
) -> tuple[ClassLabels, str]:
    """The classes of a training split's raw labels, and a sentence saying how they were ordered.

    * ``names`` given: those classes in that order (raw labels are names or class ids);
    * otherwise labels that are all 0/1 or binary spellings (`LABEL_NAMES`): :data:`BINARY`;
    * all integers: one class per distinct value, in increasing order (ids equal the values
      when they are ``0 .. K-1``), named by the value;
    * all strings: one class per distinct string, in sorted order.

    Raises:
      ValueError: labels mixing strings and numbers, a label that is neither (None, 0.5, NaN),
        or fewer than two classes; the message names the offending value or the classes.
    """
    raw = list(raw_labels)
    if names:
        classes = ClassLabels(tuple(names), ordinal=ordinal)
        return classes, f"classes from data.label_names: {classes.describe()}"
    if all(normalize_label(v) is not None for v in raw) and raw:
        found = {normalize_label(v) for v in raw}
        if len(found) < 2:
            raise ValueError(
                f"the training labels hold one class only ({BINARY.names[found.pop()]!r}): a "
                "classifier needs at least two"
            )
        return BINARY, "binary classes: 0 'negative', 1 'positive'"
    strings = [v for v in raw if isinstance(v, str)]
    if strings and len(strings) != len(raw):
        other = next(v for v in raw if not isinstance(v, str))
        raise ValueError(
            f"the training labels mix strings ({strings[0]!r}) and other values ({other!r}); "
            "give data.label_names to say which is which"
        )
    if strings:
        distinct = sorted({s.strip() for s in strings})
        if len(distinct) < 2:
            raise ValueError(f"the training labels hold one class only ({distinct[0]!r})")
        classes = ClassLabels(tuple(distinct), ordinal=ordinal)
        return classes, (
            f"classes in sorted order of the label strings: {classes.describe()} (set "
            "data.label_names to choose the order)"
        )
    values = set()
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer():
            raise ValueError(f"label {v!r} is neither an integer nor a class name")
        values.add(int(v))
    if len(values) < 2:
        raise ValueError(
            f"the training labels hold one class only ({values.pop() if values else None!r})"
        )
    ordered = sorted(values)
    identity = ordered == list(range(len(ordered)))
    classes = ClassLabels(
        tuple(str(v) for v in ordered), None if identity else tuple(ordered), ordinal=ordinal
    )
    return classes, f"classes in increasing order of the integer labels: {classes.describe()}"
