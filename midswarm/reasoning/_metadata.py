"""Item metadata held as columns, and ``where`` filters evaluated over them.

Metadata is a flat ``dict[str, str | int | float | bool]``.  Each key seen is
a column of three arrays aligned with the store's rows: a kind code (missing,
string, int, float, bool), a float64 value for numbers and bools, and an int32
code into the column's string table.  A filter becomes a boolean mask with a
few vectorised comparisons, so a filtered search stays exact and costs one
pass over the column, whatever the selectivity.

Filter language (keys are ANDed)::

    {"symbol": "AAPL"}                      equality (also {"$eq": ...})
    {"ts": {"$gte": 10, "$lt": 20}}         $gt $gte $lt $lte on numbers
    {"symbol": {"$in": ["AAPL", "MSFT"]}}   $in / $nin with a list of scalars
    {"regime": {"$ne": "calm"}}             $ne also matches items without the key
    {"label": {"$exists": True}}

Numbers compare by value whether int or float (``1 == 1.0``); bools only equal
bools; strings only equal strings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["MetadataColumns", "check_metadata", "check_where"]

_MISSING, _STR, _INT, _FLOAT, _BOOL = 0, 1, 2, 3, 4
_NUMERIC = (_INT, _FLOAT)
_MAX_EXACT_INT = 2**53
_RANGE_OPS = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less,
              "$lte": np.less_equal}
_OPS = frozenset({"$eq", "$ne", "$in", "$nin", "$exists", *_RANGE_OPS})


def _check_scalar(value: Any, where: str) -> None:
    if isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_EXACT_INT:
            raise ValueError(f"{where}: integer {value} is outside +-2**53")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a finite number")
        return
    raise TypeError(
        f"{where}: values must be str, int, float or bool, got {type(value).__name__}")


def check_metadata(metadata: Any, where: str = "metadata") -> dict[str, Any]:
    """Validate one metadata mapping; return it as a plain dict."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{where} must be a mapping, got {type(metadata).__name__}")
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if type(key) is not str:
            raise TypeError(f"{where}: keys must be str, got {key!r}")
        kind = type(value)
        # Exact-type fast paths first: this runs once per value of every batch.
        if kind is str or kind is bool or (
                kind is int and -_MAX_EXACT_INT <= value <= _MAX_EXACT_INT) or (
                kind is float and math.isfinite(value)):
            out[key] = value
        else:
            out[key] = _plain(value, f"{where}[{key!r}]")
    return out


def check_where(where: Any) -> dict[str, Any]:
    """Validate a filter (see the module docstring) before it is evaluated."""
    if not isinstance(where, Mapping):
        raise TypeError(f"where must be a mapping, got {type(where).__name__}")
    checked: dict[str, Any] = {}
    for key, cond in where.items():
        if not isinstance(key, str):
            raise TypeError(f"where: keys must be str, got {key!r}")
        if not isinstance(cond, Mapping):
            checked[key] = _plain(cond, f"where[{key!r}]")
            continue
        if not cond:
            raise ValueError(f"where[{key!r}]: empty operator mapping")
        ops: dict[str, Any] = {}
        for op, operand in cond.items():
            at = f"where[{key!r}][{op!r}]"
            if op not in _OPS:
                raise ValueError(f"{at}: unknown operator (known: {', '.join(sorted(_OPS))})")
            if op in _RANGE_OPS:
                operand = _plain(operand, at)
                if isinstance(operand, bool | str):
                    raise TypeError(f"{at}: range operands must be numbers, got {operand!r}")
            elif op in ("$in", "$nin"):
                if isinstance(operand, str | bytes) or not isinstance(
                        operand, Sequence | set | frozenset | np.ndarray):
                    raise TypeError(f"{at}: needs a list of values, got {operand!r}")
                operand = [_plain(v, at) for v in operand]
            elif op == "$exists":
                if not isinstance(operand, bool):
                    raise TypeError(f"{at}: needs True or False, got {operand!r}")
            else:
                operand = _plain(operand, at)
            ops[op] = operand
        checked[key] = ops
    return checked


def _plain(value: Any, where: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    _check_scalar(value, where)
    return value


# Values reaching the columns passed check_metadata: exactly these four types.
_KIND_OF_TYPE = {str: _STR, int: _INT, float: _FLOAT, bool: _BOOL}


class _Column:
    __slots__ = ("kind", "num", "code", "strings", "string_codes")

    def __init__(self, capacity: int) -> None:
        self.kind = np.zeros(capacity, np.int8)
        self.num = np.zeros(capacity, np.float64)
        self.code = np.zeros(capacity, np.int32)
        self.strings: list[str] = []
        self.string_codes: dict[str, int] = {}

    def grow(self, capacity: int) -> None:
        for name in ("kind", "num", "code"):
            old = getattr(self, name)
            new = np.zeros(capacity, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def intern(self, s: str) -> int:
        code = self.string_codes.get(s)
        if code is None:
            code = self.string_codes[s] = len(self.strings)
            self.strings.append(s)
        return code

    def value(self, row: int) -> Any:
        kind = self.kind[row]
        if kind == _STR:
            return self.strings[self.code[row]]
        if kind == _INT:
            return int(self.num[row])
        if kind == _BOOL:
            return bool(self.num[row])
        return float(self.num[row])

    def equals(self, value: Any, n: int) -> np.ndarray:
        kind = self.kind[:n]
        if isinstance(value, str):
            code = self.string_codes.get(value)
            if code is None:
                return np.zeros(n, bool)
            return (kind == _STR) & (self.code[:n] == code)
        if isinstance(value, bool):
            return (kind == _BOOL) & (self.num[:n] == float(value))
        return ((kind == _INT) | (kind == _FLOAT)) & (self.num[:n] == float(value))


class MetadataColumns:
    """Per-key metadata columns for rows ``0 .. n-1`` of a store.

    Rows at or beyond the live count are always all-missing, so a new row
    needs no clearing.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._columns: dict[str, _Column] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    def grow(self, capacity: int) -> None:
        for col in self._columns.values():
            col.grow(capacity)
        self._capacity = capacity

    def _column(self, key: str) -> _Column:
        col = self._columns.get(key)
        if col is None:
            col = self._columns[key] = _Column(self._capacity)
        return col

    def set_rows(self, start: int, metadata: Sequence[Mapping[str, Any]]) -> None:
        """Fill rows ``start, start+1, ...`` (which must be all-missing)."""
        per_key: dict[str, tuple[list[int], list[Any]]] = {}
        for i, md in enumerate(metadata, start):
            for key, value in md.items():
                entry = per_key.get(key)
                if entry is None:
                    entry = per_key[key] = ([], [])
                entry[0].append(i)
                entry[1].append(value)
        for key, (rows, values) in per_key.items():
            col = self._column(key)
            kinds = [_KIND_OF_TYPE[type(v)] for v in values]
            kind_set = set(kinds)
            index = np.array(rows, np.int64)
            col.kind[index] = kinds
            if kind_set == {_STR}:
                intern = col.intern
                col.code[index] = [intern(v) for v in values]
                col.num[index] = 0.0
            elif _STR not in kind_set:
                col.num[index] = values
                col.code[index] = 0
            else:
                col.num[index] = [0.0 if type(v) is str else v for v in values]
                col.code[index] = [col.intern(v) if type(v) is str else 0 for v in values]

    def replace_row(self, row: int, metadata: Mapping[str, Any]) -> None:
        self.clear_row(row)
        self.set_rows(row, [metadata])

    def clear_row(self, row: int) -> None:
        for col in self._columns.values():
            col.kind[row] = _MISSING

    def move_row(self, src: int, dst: int) -> None:
        """Copy row ``src`` over ``dst`` and clear ``src``."""
        for col in self._columns.values():
            col.kind[dst] = col.kind[src]
            col.num[dst] = col.num[src]
            col.code[dst] = col.code[src]
            col.kind[src] = _MISSING

    def row(self, row: int) -> dict[str, Any]:
        return {key: col.value(row) for key, col in self._columns.items()
                if col.kind[row] != _MISSING}

    def mask(self, where: Mapping[str, Any], n: int) -> np.ndarray:
        """Rows ``0 .. n-1`` that satisfy an already-checked ``where``."""
        result = np.ones(n, bool)
        for key, cond in where.items():
            col = self._columns.get(key)
            conds = cond.items() if isinstance(cond, Mapping) else [("$eq", cond)]
            for op, operand in conds:
                result &= self._evaluate(col, op, operand, n)
        return result

    def _evaluate(self, col: _Column | None, op: str, operand: Any, n: int) -> np.ndarray:
        if col is None:
            # A key no item has: only the negative operators match anything.
            matches_all = op in ("$ne", "$nin") or (op == "$exists" and not operand)
            return np.full(n, matches_all)
        if op == "$eq":
            return col.equals(operand, n)
        if op == "$ne":
            return ~col.equals(operand, n)
        if op in ("$in", "$nin"):
            hit = np.zeros(n, bool)
            for v in operand:
                hit |= col.equals(v, n)
            return hit if op == "$in" else ~hit
        if op == "$exists":
            present = col.kind[:n] != _MISSING
            return present if operand else ~present
        kind = col.kind[:n]
        numeric = (kind == _INT) | (kind == _FLOAT)
        return numeric & _RANGE_OPS[op](col.num[:n], float(operand))


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(metadata: Mapping[str, Any]) -> str:
    """The stored JSON form of validated metadata."""
    return _ENCODER.encode(metadata)
