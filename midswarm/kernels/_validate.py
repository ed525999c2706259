"""Argument checks shared by the kernels.

Every public kernel funnels its inputs through these helpers so that bad input
fails the same way everywhere: a :class:`ValueError` (or :class:`TypeError` for
a value of the wrong kind) whose message starts with the argument's name.  The
helpers hand back float64, C-contiguous copies or views, so the compiled
kernels see one dtype and one layout and compile once.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "as_series",
    "as_matrix",
    "as_series_list",
    "check_window",
    "check_optional_window",
    "check_positive_int",
    "check_nonnegative_float",
    "check_fraction",
]


def _as_float_array(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name}: cannot be read as a numeric array ({exc})") from exc
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    return arr


def _finite(name: str, arr: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out.ravel()))[0])
        raise ValueError(f"{name}: contains NaN or inf (first at flat index {bad})")
    return out


def as_series(name: str, value: Any, *, min_length: int = 1) -> np.ndarray:
    """Return *value* as a finite 1-D float64 array of at least *min_length* points.

    Raises:
        ValueError: if it is not 1-D, too short, not numeric, or holds NaN/inf.
    """
    arr = _as_float_array(name, value)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D series, got {arr.ndim}-D shape {arr.shape}")
    if arr.shape[0] < min_length:
        raise ValueError(
            f"{name}: needs at least {min_length} point(s), got {arr.shape[0]}"
        )
    return _finite(name, arr)


def as_matrix(
    name: str, value: Any, *, min_rows: int = 1, min_cols: int = 1
) -> np.ndarray:
    """Return *value* as a finite 2-D float64 C-contiguous array.

    Raises:
        ValueError: if it is not 2-D, has too few rows or columns, or holds NaN/inf.
    """
    arr = _as_float_array(name, value)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got {arr.ndim}-D shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} row(s), got {arr.shape[0]}")
    if arr.shape[1] < min_cols:
        raise ValueError(f"{name}: needs at least {min_cols} column(s), got {arr.shape[1]}")
    return _finite(name, arr)


def as_series_list(name: str, value: Any, *, min_count: int = 1) -> list[np.ndarray]:
    """Return *value* (a 2-D array or a sequence of 1-D series) as a list of series.

    Series may differ in length.  Raises :class:`ValueError` naming the argument
    (and the offending item) for anything else.
    """
    if isinstance(value, np.ndarray):
        if value.ndim != 2:
            raise ValueError(
                f"{name}: expected a 2-D array or a sequence of 1-D series, "
                f"got a {value.ndim}-D array"
            )
        mat = as_matrix(name, value, min_rows=min_count)
        return [mat[i] for i in range(mat.shape[0])]
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ValueError(
            f"{name}: expected a 2-D array or a sequence of 1-D series, "
            f"got {type(value).__name__}"
        )
    if len(value) < min_count:
        raise ValueError(f"{name}: needs at least {min_count} series, got {len(value)}")
    return [as_series(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_window(name: str, value: Any) -> int:
    """Return *value* as a non-negative int, or raise naming the argument."""
    if not _is_int(value):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return int(value)


def check_optional_window(name: str, value: Any) -> int | None:
    """Like :func:`check_window` but ``None`` (meaning unconstrained) passes through."""
    if value is None:
        return None
    return check_window(name, value)


def check_positive_int(name: str, value: Any) -> int:
    """Return *value* as an int >= 1, or raise naming the argument."""
    if not _is_int(value):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: must be >= 1, got {value}")
    return int(value)


def check_nonnegative_float(name: str, value: Any) -> float:
    """Return *value* as a finite float >= 0, or raise naming the argument."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    out = float(value)
    if not np.isfinite(out) or out < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
    return out


def check_fraction(name: str, value: Any) -> float:
    """Return *value* as a float strictly inside (0, 1), or raise naming the argument."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    out = float(value)
    if not 0.0 < out < 1.0:
        raise ValueError(f"{name}: must lie strictly between 0 and 1, got {value}")
    return out
