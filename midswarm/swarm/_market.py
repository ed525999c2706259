"""Market data for the demo: a seeded synthetic market, or bars from a CSV file.

Synthetic market
----------------
:func:`synthetic_market` draws, per asset, a regime path from a four-state
Markov chain (:data:`REGIMES`: trend up, trend down, mean reverting, volatile;
each bar stays in its regime with probability ``stay``, else moves to one of
the others uniformly) and log returns from the regime (drift, volatility, and
for the mean-reverting regime a pull back to the level where it began), plus a
factor common to all assets.  Into that path it injects *motifs*: a few fixed
shapes (:data:`MOTIFS`) of ``motif_length`` bars, scaled to the asset's
volatility, each followed by a characteristic move over ``horizon`` bars (for
instance a double bottom followed by a rise).  So a pattern matcher looking at
windows of ``motif_length`` bars has something real to find -- and most windows
are still noise.  Bars are built from the close path: the open is the previous
close with a small gap, high and low stretch beyond both, and volume grows with
the size of the move.  The same seed gives the same market, bit for bit.

CSV files
---------
:func:`load_csv` reads a header line naming the columns ``timestamp, open,
high, low, close, volume`` and optionally ``asset`` (any order, any case;
other columns are ignored), then one bar per line.  ``timestamp`` is a number
(seconds since the epoch) or an ISO-8601 date/time.  A row is bad when a field
is missing or not a number, a price is not > 0, ``high`` is below ``low`` or
below ``max(open, close)``, ``low`` is above ``min(open, close)``, volume is
negative, or its timestamp is not later than the previous bar of its asset.
By default every bad row is reported, by line number, in one
:class:`MarketDataError` and nothing is returned; with ``skip_bad=True`` bad
rows are left out and listed in :attr:`MarketData.skipped`.
"""

from __future__ import annotations

import csv
import math
import os
from datetime import UTC, datetime
from typing import Any

import attrs
import numpy as np

__all__ = [
    "BadRow",
    "MOTIFS",
    "MarketData",
    "MarketDataError",
    "MotifEvent",
    "REGIMES",
    "load_csv",
    "synthetic_market",
]

#: Regime name -> (drift per bar, volatility per bar, mean-reversion strength).
REGIMES: dict[str, tuple[float, float, float]] = {
    "trend_up": (0.0008, 0.006, 0.0),
    "trend_down": (-0.0008, 0.006, 0.0),
    "mean_reverting": (0.0, 0.005, 0.08),
    "volatile": (0.0, 0.018, 0.0),
}


def _shape(points: list[float], length: int) -> np.ndarray:
    grid = np.linspace(0.0, 1.0, len(points))
    return np.interp(np.linspace(0.0, 1.0, length), grid, np.asarray(points, dtype=float))


#: Motif name -> (shape key points of the log price, following move in units
#: of volatility * sqrt(horizon)).  Shapes are drawn through the key points.
MOTIFS: dict[str, tuple[list[float], float]] = {
    "double_bottom": ([0.0, -1.0, -0.3, -1.0, 0.2], +1.6),
    "head_and_shoulders": ([0.0, 0.7, 0.2, 1.2, 0.2, 0.7, -0.2], -1.6),
    "rounding_top": ([0.0, 0.6, 0.9, 1.0, 0.9, 0.6, 0.1], -1.2),
    "bull_flag": ([0.0, 1.2, 1.0, 1.1, 0.9, 1.0, 0.85], +1.2),
}

_OHLCV = ("open", "high", "low", "close", "volume")


@attrs.frozen
class MotifEvent:
    """A motif injected into an asset: it spans bars ``start .. start + length - 1``,
    and its following move spans the next ``horizon`` bars."""

    asset: str
    motif: str
    start: int
    length: int
    horizon: int


@attrs.frozen
class BadRow:
    """A CSV line that could not be used, and why."""

    line: int
    reason: str


class MarketDataError(ValueError):
    """A market data file could not be used; the message lists what was wrong, by line."""

    def __init__(self, path: str, problems: list[BadRow], message: str | None = None) -> None:
        self.path = path
        self.problems = problems
        if message is None:
            shown = "; ".join(f"line {p.line}: {p.reason}" for p in problems[:20])
            more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
            message = f"{path}: {len(problems)} bad row(s): {shown}{more}"
        super().__init__(message)


@attrs.frozen
class MarketData:
    """Bars per asset: ``bars[asset]`` is ``(n, 5)`` float64 (open, high, low,
    close, volume) and ``timestamps[asset]`` the ``n`` bar times (seconds).

    ``regimes[asset]`` (synthetic markets only) is the regime index of every
    bar into ``list(REGIMES)``; ``motifs`` lists the injected motifs; ``skipped``
    the CSV rows left out.
    """

    bars: dict[str, np.ndarray] = attrs.field(eq=False)
    timestamps: dict[str, np.ndarray] = attrs.field(eq=False)
    regimes: dict[str, np.ndarray] = attrs.field(factory=dict, eq=False)
    motifs: list[MotifEvent] = attrs.Factory(list)
    skipped: list[BadRow] = attrs.Factory(list)
    source: str = "synthetic"

    @property
    def assets(self) -> list[str]:
        return list(self.bars)

    def __len__(self) -> int:
        """The number of bars of the shortest asset."""
        return min((b.shape[0] for b in self.bars.values()), default=0)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def synthetic_market(seed: int = 0, *, assets: int = 3, bars: int = 2000,
                     motif_length: int = 24, horizon: int = 8, motif_rate: float = 1 / 40,
                     stay: float = 0.985, start_price: float = 100.0) -> MarketData:
    """A seeded synthetic multi-asset market (see the module docstring).

    ``motif_rate`` is the chance that a motif starts at a bar where none is
    running (so about one motif per ``1 / motif_rate + motif_length + horizon``
    bars).  Assets are named ``A0``, ``A1``, ...; bar ``i`` is at time ``60 i``.

    Raises :class:`ValueError` for counts below their minimum (1 asset, 2 bars,
    4-bar motifs, 1-bar horizon), a rate outside [0, 1] or ``stay`` outside
    [0, 1).
    """
    _check_int("assets", assets, 1)
    _check_int("bars", bars, 2)
    _check_int("motif_length", motif_length, 4)
    _check_int("horizon", horizon, 1)
    if not 0.0 <= motif_rate <= 1.0:
        raise ValueError(f"motif_rate must be in [0, 1], got {motif_rate!r}")
    if not 0.0 <= stay < 1.0:
        raise ValueError(f"stay must be in [0, 1), got {stay!r}")
    if not start_price > 0:
        raise ValueError(f"start_price must be > 0, got {start_price!r}")
    rng = np.random.default_rng(seed)
    names = list(REGIMES)
    params = np.array([REGIMES[n] for n in names])
    common = rng.normal(0.0, 0.003, bars)
    shapes = {name: _shape(points, motif_length) for name, (points, _) in MOTIFS.items()}
    motif_names = list(MOTIFS)
    out_bars: dict[str, np.ndarray] = {}
    out_regimes: dict[str, np.ndarray] = {}
    events: list[MotifEvent] = []
    for a in range(assets):
        asset = f"A{a}"
        regime = np.empty(bars, dtype=np.int64)
        regime[0] = rng.integers(len(names))
        moves = rng.random(bars)
        jumps = rng.integers(1, len(names), bars)
        for t in range(1, bars):
            regime[t] = regime[t - 1] if moves[t] < stay else (regime[t - 1] + jumps[t]) % len(
                names)
        noise = rng.normal(0.0, 1.0, bars)
        beta = rng.uniform(0.5, 1.2)
        log_price = np.empty(bars)
        log_price[0] = math.log(start_price)
        anchor = log_price[0]
        t = 1
        while t < bars:
            if regime[t] != regime[t - 1]:
                anchor = log_price[t - 1]
            if rng.random() < motif_rate and t + motif_length + horizon <= bars:
                name = motif_names[rng.integers(len(motif_names))]
                vol = params[regime[t], 1]
                amp = vol * math.sqrt(motif_length) * rng.uniform(0.8, 1.2)
                steps = np.diff(shapes[name], prepend=shapes[name][0]) * amp
                span = motif_length + horizon
                follow = MOTIFS[name][1] * vol * math.sqrt(horizon) / horizon
                for i in range(span):
                    step = steps[i] if i < motif_length else follow
                    log_price[t + i] = (log_price[t + i - 1] + step + beta * common[t + i]
                                        + 0.3 * vol * noise[t + i])
                events.append(MotifEvent(asset, name, t, motif_length, horizon))
                t += span
                anchor = log_price[t - 1]
                continue
            drift, vol, pull = params[regime[t]]
            r = drift + vol * noise[t] + beta * common[t] - pull * (log_price[t - 1] - anchor)
            log_price[t] = log_price[t - 1] + r
            t += 1
        out_bars[asset] = _bars_from_close(np.exp(log_price), params[regime, 1], rng)
        out_regimes[asset] = regime
    stamps = np.arange(bars, dtype=np.float64) * 60.0
    return MarketData(bars=out_bars, timestamps={a: stamps.copy() for a in out_bars},
                      regimes=out_regimes, motifs=events,
                      source=f"synthetic(seed={seed}, assets={assets}, bars={bars})")


def _bars_from_close(close: np.ndarray, vol: np.ndarray, rng: np.random.Generator
                     ) -> np.ndarray:
    n = close.shape[0]
    opens = np.empty(n)
    opens[0] = close[0]
    opens[1:] = close[:-1] * np.exp(rng.normal(0.0, 0.2, n - 1) * vol[1:])
    top = np.maximum(opens, close)
    bottom = np.minimum(opens, close)
    high = top * np.exp(np.abs(rng.normal(0.0, 0.5, n)) * vol)
    low = bottom * np.exp(-np.abs(rng.normal(0.0, 0.5, n)) * vol)
    moved = np.abs(np.log(close / opens)) / vol
    volume = np.round(1000.0 * (1.0 + moved) * rng.lognormal(0.0, 0.3, n))
    return np.column_stack([opens, high, low, close, volume])


# --- CSV ---------------------------------------------------------------------------


def _timestamp(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"timestamp {text!r} is not finite")
    return value


def _row_problem(values: list[float]) -> str | None:
    o, h, lo, c, v = values
    if min(o, h, lo, c) <= 0:
        return "prices must be > 0"
    if h < lo:
        return f"high {h:g} is below low {lo:g}"
    if h < max(o, c):
        return f"high {h:g} is below max(open, close) {max(o, c):g}"
    if lo > min(o, c):
        return f"low {lo:g} is above min(open, close) {min(o, c):g}"
    if v < 0:
        return f"volume {v:g} is negative"
    return None


def load_csv(path: str | os.PathLike[str], *, skip_bad: bool = False,
             default_asset: str = "CSV") -> MarketData:
    """Bars from a CSV file (see the module docstring for the format and checks).

    Rows without an ``asset`` column (or with an empty one) belong to
    ``default_asset``.  Raises :class:`MarketDataError` for a missing header
    column, for a file without usable bars, and -- unless ``skip_bad`` -- for
    any bad row, listing every bad row by line number; :class:`OSError` if the
    file cannot be read.
    """
    name = os.fspath(path)
    problems: list[BadRow] = []
    rows: dict[str, list[list[float]]] = {}
    with open(name, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise MarketDataError(name, [], f"{name}: the file is empty (expected a header "
                                            f"line: timestamp,open,high,low,close,volume)")
        columns = [h.strip().lower() for h in header]
        missing = [c for c in ("timestamp", *_OHLCV) if c not in columns]
        if missing:
            raise MarketDataError(name, [BadRow(1, f"missing column(s) {', '.join(missing)}")],
                                  f"{name}: line 1 (header) lacks column(s) "
                                  f"{', '.join(missing)}; found {', '.join(columns)}")
        where = {c: columns.index(c) for c in ("timestamp", *_OHLCV)}
        asset_col = columns.index("asset") if "asset" in columns else None
        last_time: dict[str, float] = {}
        for record in reader:
            line = reader.line_num
            if not record or all(not field.strip() for field in record):
                continue
            if len(record) < len(columns):
                problems.append(BadRow(line, f"{len(record)} field(s), expected {len(columns)}"))
                continue
            asset = default_asset
            if asset_col is not None and record[asset_col].strip():
                asset = record[asset_col].strip()
            try:
                stamp = _timestamp(record[where["timestamp"]])
            except ValueError:
                problems.append(BadRow(line, f"timestamp {record[where['timestamp']]!r} is "
                                             f"neither a number nor an ISO-8601 time"))
                continue
            values: list[float] = []
            bad = None
            for column in _OHLCV:
                text = record[where[column]]
                try:
                    number = float(text)
                except ValueError:
                    bad = f"{column} {text!r} is not a number"
                    break
                if not math.isfinite(number):
                    bad = f"{column} {text!r} is not finite"
                    break
                values.append(number)
            if bad is None:
                bad = _row_problem(values)
            if bad is None and asset in last_time and stamp <= last_time[asset]:
                bad = (f"timestamp {record[where['timestamp']]!r} is not later than the "
                       f"previous bar of asset {asset!r}")
            if bad is not None:
                problems.append(BadRow(line, bad))
                continue
            last_time[asset] = stamp
            rows.setdefault(asset, []).append([stamp, *values])
    if problems and not skip_bad:
        raise MarketDataError(name, problems)
    if not rows:
        raise MarketDataError(name, problems, f"{name}: no usable bars"
                              + (f" ({len(problems)} bad row(s))" if problems else ""))
    arrays = {asset: np.asarray(r, dtype=np.float64) for asset, r in rows.items()}
    return MarketData(bars={a: np.ascontiguousarray(x[:, 1:]) for a, x in arrays.items()},
                      timestamps={a: x[:, 0].copy() for a, x in arrays.items()},
                      skipped=problems, source=name)
