"""Binary sentiment labels: the accepted spellings and their conversion to 0/1."""

from __future__ import annotations

import math
import numbers

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
