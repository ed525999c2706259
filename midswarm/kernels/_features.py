"""Technical features from OHLCV bars in one compiled pass per feature group.

Theory of operation
-------------------
Each group of related columns (returns and realised volatility; rolling
mean/std/z-score/Bollinger; EMA; RSI; MACD; ATR) is one sequential loop over the
bars, and the groups run side by side on different threads.  Rolling sums are
kept relative to a reference value that is refreshed, with an exact recompute
of the window, every :data:`_REFRESH` bars: sliding sums stay O(1) per bar but
their rounding error cannot build up, and the reference removes the price level
so the variance does not cancel catastrophically.

Exponential averages follow the TA-Lib convention: seeded with the simple mean
of their first ``span`` inputs, then ``e += alpha * (x - e)`` with
``alpha = 2 / (span + 1)`` (EMA, MACD) or ``alpha = 1 / period`` (Wilder's RSI
and ATR).  A row before a column has enough history is NaN, never 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import prange

from ._validate import check_nonnegative_float, check_positive_int

__all__ = ["FEATURE_COLUMNS", "FeatureFrame", "features"]

#: Column names of :func:`features`, in order.
FEATURE_COLUMNS = (
    "log_return",
    "rolling_mean",
    "rolling_std",
    "zscore",
    "ema",
    "rsi",
    "macd",
    "macd_signal",
    "macd_hist",
    "bollinger_pctb",
    "atr",
    "realized_vol",
)
_OHLCV = ("open", "high", "low", "close", "volume")
_REFRESH = 64
_NAN = np.nan


@dataclass(frozen=True)
class FeatureFrame:
    """Named float64 feature columns, one row per input bar.

    ``values`` is ``(rows, len(columns))`` and column-major, so ``frame["rsi"]``
    is a contiguous view.
    """

    columns: tuple[str, ...]
    values: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.values[:, self.columns.index(name)]
        except ValueError:
            raise KeyError(f"no feature column named {name!r}") from None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def to_dict(self) -> dict[str, np.ndarray]:
        """Column name -> column array (views)."""
        return {name: self[name] for name in self.columns}


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _returns_and_vol(close: np.ndarray, vol_window: int, ret: np.ndarray, rv: np.ndarray) -> None:
    n = close.shape[0]
    ret[0] = _NAN
    for t in range(1, n):
        ret[t] = np.log(close[t] / close[t - 1])
    for t in range(min(n, vol_window)):
        rv[t] = _NAN
    acc = 0.0
    for t in range(vol_window, n):
        # Returns t - vol_window + 1 .. t, all defined from t = vol_window on.
        if (t - vol_window) % _REFRESH == 0:
            acc = 0.0
            for s in range(t - vol_window + 1, t + 1):
                acc += ret[s] * ret[s]
        else:
            old = ret[t - vol_window]
            acc += ret[t] * ret[t] - old * old
        rv[t] = np.sqrt(max(acc, 0.0))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _rolling(
    close: np.ndarray, window: int, k: float, mean_out: np.ndarray, std_out: np.ndarray,
    z_out: np.ndarray, pctb_out: np.ndarray,
) -> None:
    n = close.shape[0]
    ref = 0.0
    s1 = 0.0
    s2 = 0.0
    for t in range(n):
        if t < window - 1:
            mean_out[t] = _NAN
            std_out[t] = _NAN
            z_out[t] = _NAN
            pctb_out[t] = _NAN
            continue
        first = t - window + 1
        if (t - window + 1) % _REFRESH == 0:
            ref = close[t]
            s1 = 0.0
            s2 = 0.0
            for s in range(first, t + 1):
                d = close[s] - ref
                s1 += d
                s2 += d * d
        else:
            d_new = close[t] - ref
            d_old = close[first - 1] - ref
            s1 += d_new - d_old
            s2 += d_new * d_new - d_old * d_old
        mu = s1 / window
        var = (s2 - s1 * mu) / (window - 1)
        sd = np.sqrt(max(var, 0.0))
        mean = ref + mu
        mean_out[t] = mean
        std_out[t] = sd
        if sd > 0.0:
            z_out[t] = (close[t] - mean) / sd
            pctb_out[t] = (close[t] - (mean - k * sd)) / (2.0 * k * sd)
        else:
            z_out[t] = _NAN
            pctb_out[t] = _NAN


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _ema_seeded(x: np.ndarray, first: int, span: int, alpha: float, out: np.ndarray) -> None:
    """SMA-seeded exponential average of ``x[first:]``; NaN before it is defined."""
    n = x.shape[0]
    seed_at = first + span - 1
    for t in range(min(n, seed_at)):
        out[t] = _NAN
    if seed_at >= n:
        return
    acc = 0.0
    for t in range(first, seed_at + 1):
        acc += x[t]
    e = acc / span
    out[seed_at] = e
    for t in range(seed_at + 1, n):
        e += alpha * (x[t] - e)
        out[t] = e


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _rsi(close: np.ndarray, period: int, out: np.ndarray) -> None:
    n = close.shape[0]
    for t in range(min(n, period)):
        out[t] = _NAN
    if period >= n:
        return
    gain = 0.0
    loss = 0.0
    for t in range(1, period + 1):
        d = close[t] - close[t - 1]
        if d > 0:
            gain += d
        else:
            loss -= d
    gain /= period
    loss /= period
    alpha = 1.0 / period
    for t in range(period, n):
        if t > period:
            d = close[t] - close[t - 1]
            gain += alpha * ((d if d > 0 else 0.0) - gain)
            loss += alpha * ((-d if d < 0 else 0.0) - loss)
        total = gain + loss
        out[t] = 50.0 if total == 0.0 else 100.0 * gain / total


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _macd(
    close: np.ndarray, fast: int, slow: int, signal: int, macd: np.ndarray,
    sig: np.ndarray, hist: np.ndarray, scratch: np.ndarray,
) -> None:
    n = close.shape[0]
    _ema_seeded(close, 0, fast, 2.0 / (fast + 1), scratch)
    _ema_seeded(close, 0, slow, 2.0 / (slow + 1), macd)
    for t in range(n):
        macd[t] = scratch[t] - macd[t]  # NaN until the slow EMA is defined
    _ema_seeded(macd, slow - 1, signal, 2.0 / (signal + 1), sig)
    for t in range(n):
        hist[t] = macd[t] - sig[t]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _atr(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int, out: np.ndarray
) -> None:
    n = close.shape[0]
    tr = np.empty(n)
    tr[0] = _NAN
    for t in range(1, n):
        pc = close[t - 1]
        r = high[t] - low[t]
        a = abs(high[t] - pc)
        b = abs(low[t] - pc)
        if a > r:
            r = a
        if b > r:
            r = b
        tr[t] = r
    _ema_seeded(tr, 1, period, 1.0 / period, out)


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _compute(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, params: np.ndarray, k: float,
    out: np.ndarray,
) -> None:
    window, ema_span, rsi_p, fast, slow, signal, atr_p, vol_w = (
        params[0], params[1], params[2], params[3], params[4], params[5], params[6],
        params[7],
    )
    for g in prange(6):
        if g == 0:
            _returns_and_vol(close, vol_w, out[0], out[11])
        elif g == 1:
            _rolling(close, window, k, out[1], out[2], out[3], out[9])
        elif g == 2:
            _ema_seeded(close, 0, ema_span, 2.0 / (ema_span + 1), out[4])
        elif g == 3:
            _rsi(close, rsi_p, out[5])
        elif g == 4:
            _macd(close, fast, slow, signal, out[6], out[7], out[8], np.empty(close.shape[0]))
        else:
            _atr(high, low, close, atr_p, out[10])


@numba.njit(cache=True, nogil=True)
def _first_bad(buf: np.ndarray) -> tuple[int, int]:
    """(row, column) of the first non-finite value, or (-1, 3) when some close
    is <= 0, or (-1, -1) when all is well."""
    n = buf.shape[1]
    for col in range(3):
        for t in range(n):
            v = buf[col, t]
            if not np.isfinite(v):
                return t, col
    for t in range(n):
        if buf[2, t] <= 0.0:
            return -1, 3
    return -1, -1


def _columns(ohlcv: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(ohlcv, Mapping):
        missing = [c for c in ("high", "low", "close") if c not in ohlcv]
        if missing:
            raise ValueError(f"ohlcv: mapping lacks column(s) {', '.join(missing)}")
        cols = [np.asarray(ohlcv[c]) for c in ("high", "low", "close")]
    else:
        arr = np.asarray(ohlcv)
        if arr.dtype.names is not None:
            missing = [c for c in ("high", "low", "close") if c not in arr.dtype.names]
            if missing:
                raise ValueError(f"ohlcv: structured array lacks field(s) {', '.join(missing)}")
            cols = [arr[c] for c in ("high", "low", "close")]
        else:
            if arr.ndim != 2 or arr.shape[1] != 5:
                raise ValueError(
                    "ohlcv: expected a (bars, 5) array of open, high, low, close, volume, "
                    f"got shape {arr.shape}"
                )
            cols = [arr[:, 1], arr[:, 2], arr[:, 3]]
    lengths = set()
    for name, col in zip(("high", "low", "close"), cols, strict=True):
        if col.dtype.kind not in "biuf":
            raise ValueError(f"ohlcv: column {name} is not numeric (dtype {col.dtype})")
        if col.ndim != 1:
            raise ValueError(f"ohlcv: column {name} must be 1-D, got shape {col.shape}")
        lengths.add(col.shape[0])
    if len(lengths) != 1:
        raise ValueError("ohlcv: columns have different lengths")
    n = lengths.pop()
    if n == 0:
        raise ValueError("ohlcv: no bars")
    # One contiguous float64 copy per column (numpy handles strides and
    # dtypes), then one compiled pass for every check.
    buf = np.empty((3, n))
    for i, col in enumerate(cols):
        buf[i] = col
    bad_row, bad_col = _first_bad(buf)
    if bad_row >= 0:
        name = ("high", "low", "close")[bad_col]
        raise ValueError(f"ohlcv: column {name} contains NaN or inf (row {bad_row})")
    if bad_col == 3:
        raise ValueError("ohlcv: close must be > 0 (log returns)")
    high, low, close = buf[0], buf[1], buf[2]
    return high, low, close


def features(
    ohlcv: Any,
    *,
    window: int = 20,
    ema_span: int = 20,
    rsi_period: int = 14,
    macd_fast: int = 12,
    macd_slow: int = 26,
    macd_signal: int = 9,
    bollinger_k: float = 2.0,
    atr_period: int = 14,
    vol_window: int = 20,
) -> FeatureFrame:
    """Feature matrix of OHLCV bars; columns are :data:`FEATURE_COLUMNS`.

    *ohlcv* is a ``(bars, 5)`` array (open, high, low, close, volume), a
    structured array or a mapping with at least ``high``, ``low`` and ``close``.
    With ``c`` the close and ``r`` the log return:

    - ``log_return[t] = log(c[t] / c[t-1])``;
    - ``rolling_mean``, ``rolling_std`` (sample, ddof=1) of ``c`` over *window*
      bars; ``zscore = (c - mean) / std``; ``bollinger_pctb = (c - (mean -
      k std)) / (2 k std)`` with ``k = bollinger_k`` (NaN where std is 0);
    - ``ema``: SMA-seeded EMA of ``c``, ``alpha = 2 / (ema_span + 1)``;
    - ``rsi``: Wilder's RSI, ``100 * avg_gain / (avg_gain + avg_loss)`` (50 when
      price did not move), averages seeded with the mean of the first
      *rsi_period* changes;
    - ``macd = ema_fast - ema_slow``, ``macd_signal`` its SMA-seeded EMA over
      *macd_signal* values, ``macd_hist = macd - macd_signal``;
    - ``atr``: Wilder average of the true range ``max(h - l, |h - c[t-1]|,
      |l - c[t-1]|)`` over *atr_period*;
    - ``realized_vol[t] = sqrt(sum of r**2 over the last vol_window returns)``.

    Rows without enough history for a column are NaN there.

    Raises:
        ValueError: for a wrong shape, NaN/inf, a non-positive close, a window
            parameter < 1 (< 2 for *window*), ``macd_fast >= macd_slow`` or a
            *bollinger_k* that is not a finite number > 0.
        TypeError: for a non-int window parameter.
    """
    high, low, close = _columns(ohlcv)
    params = np.array(
        [
            check_positive_int("window", window),
            check_positive_int("ema_span", ema_span),
            check_positive_int("rsi_period", rsi_period),
            check_positive_int("macd_fast", macd_fast),
            check_positive_int("macd_slow", macd_slow),
            check_positive_int("macd_signal", macd_signal),
            check_positive_int("atr_period", atr_period),
            check_positive_int("vol_window", vol_window),
        ],
        dtype=np.int64,
    )
    if window < 2:
        raise ValueError(f"window: must be >= 2 for a sample standard deviation, got {window}")
    if macd_fast >= macd_slow:
        raise ValueError(
            f"macd_fast: must be shorter than macd_slow, got {macd_fast} >= {macd_slow}"
        )
    k = check_nonnegative_float("bollinger_k", bollinger_k)
    if k == 0:
        raise ValueError("bollinger_k: must be > 0, got 0")
    out = np.empty((len(FEATURE_COLUMNS), close.shape[0]))
    _compute(high, low, close, params, k, out)
    return FeatureFrame(columns=FEATURE_COLUMNS, values=out.T)
