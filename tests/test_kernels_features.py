"""Features against pandas (exponential averages), exact numpy windows
(rolling statistics) and values worked out by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from midswarm.kernels import FEATURE_COLUMNS, FeatureFrame, features


def _bars(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(0.01 * rng.standard_normal(n)))
    high = close * (1 + 0.01 * rng.random(n))
    low = close * (1 - 0.01 * rng.random(n))
    open_ = close * (1 + 0.003 * rng.standard_normal(n))
    volume = rng.integers(100, 10_000, n).astype(float)
    return np.column_stack([open_, high, low, close, volume])


def _seeded_ewm(s: pd.Series, span: int, alpha: float) -> pd.Series:
    """pandas ewm(adjust=False) started from the mean of the first *span*
    defined values (the TA-Lib seeding)."""
    x = s.loc[s.first_valid_index():]
    seeded = x.iloc[span - 1:].copy()
    seeded.iloc[0] = x.iloc[:span].mean()
    return seeded.ewm(alpha=alpha, adjust=False).mean().reindex(s.index)


def _exact_rolling(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    mean = np.full(x.size, np.nan)
    std = np.full(x.size, np.nan)
    view = np.lib.stride_tricks.sliding_window_view(x, window)
    mean[window - 1:] = view.mean(axis=1)
    std[window - 1:] = view.std(axis=1, ddof=1)
    return mean, std


def _check(ours: np.ndarray, ref: np.ndarray, atol: float = 1e-9) -> None:
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=atol, equal_nan=True)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"window": 7, "ema_span": 5, "rsi_period": 3, "macd_fast": 4, "macd_slow": 9,
         "macd_signal": 3, "bollinger_k": 1.5, "atr_period": 6, "vol_window": 11},
    ],
)
def test_features_match_references(params: dict[str, Any]) -> None:
    bars = _bars(3000, seed=len(params))
    frame = features(bars, **params)
    p = {"window": 20, "ema_span": 20, "rsi_period": 14, "macd_fast": 12, "macd_slow": 26,
         "macd_signal": 9, "bollinger_k": 2.0, "atr_period": 14, "vol_window": 20}
    p.update(params)
    df = pd.DataFrame(bars, columns=["open", "high", "low", "close", "volume"])
    c = df["close"]
    ret = np.log(c / c.shift(1))
    _check(frame["log_return"], ret.to_numpy())

    mean, std = _exact_rolling(c.to_numpy(), int(p["window"]))
    _check(frame["rolling_mean"], mean)
    _check(frame["rolling_std"], std)
    _check(frame["zscore"], (c.to_numpy() - mean) / std, atol=1e-8)
    k = p["bollinger_k"]
    _check(frame["bollinger_pctb"], (c.to_numpy() - (mean - k * std)) / (2 * k * std), atol=1e-8)

    span = int(p["ema_span"])
    _check(frame["ema"], _seeded_ewm(c, span, 2 / (span + 1)).to_numpy())

    period = int(p["rsi_period"])
    diff = c.diff()
    gain = _seeded_ewm(diff.clip(lower=0), period, 1 / period)
    loss = _seeded_ewm((-diff).clip(lower=0), period, 1 / period)
    _check(frame["rsi"], (100 * gain / (gain + loss)).to_numpy(), atol=1e-8)

    fast, slow, sig = int(p["macd_fast"]), int(p["macd_slow"]), int(p["macd_signal"])
    macd = _seeded_ewm(c, fast, 2 / (fast + 1)) - _seeded_ewm(c, slow, 2 / (slow + 1))
    signal = _seeded_ewm(macd, sig, 2 / (sig + 1))
    _check(frame["macd"], macd.to_numpy(), atol=1e-9 * c.max())
    _check(frame["macd_signal"], signal.to_numpy(), atol=1e-9 * c.max())
    _check(frame["macd_hist"], (macd - signal).to_numpy(), atol=1e-9 * c.max())

    prev = c.shift(1)
    tr = pd.concat(
        [df["high"] - df["low"], (df["high"] - prev).abs(), (df["low"] - prev).abs()], axis=1
    ).max(axis=1, skipna=False)
    atr_p = int(p["atr_period"])
    _check(frame["atr"], _seeded_ewm(tr, atr_p, 1 / atr_p).to_numpy())

    vol_w = int(p["vol_window"])
    sq = (ret * ret).to_numpy()
    rv = np.full(sq.size, np.nan)
    rv[vol_w:] = np.sqrt(np.lib.stride_tricks.sliding_window_view(sq[1:], vol_w).sum(axis=1))
    _check(frame["realized_vol"], rv)


def test_values_worked_out_by_hand() -> None:
    close = np.array([10.0, 11.0, 10.0, 12.0, 12.0])
    high = close + 1.0
    low = close - 1.0
    bars = {"high": high, "low": low, "close": close}
    f = features(bars, window=2, ema_span=2, rsi_period=2, macd_fast=1, macd_slow=2,
                 macd_signal=2, atr_period=2, vol_window=2, bollinger_k=1.0)
    # EMA span 2: alpha 2/3, seed mean(10, 11) = 10.5 at row 1.
    ema2 = 10.5 + 2 / 3 * (10 - 10.5)
    ema3 = ema2 + 2 / 3 * (12 - ema2)
    np.testing.assert_allclose(f["ema"][1:], [10.5, ema2, ema3, ema3 + 2 / 3 * (12 - ema3)])
    assert np.isnan(f["ema"][0])
    # RSI period 2: changes +1, -1 -> gain 0.5, loss 0.5 -> 50 at row 2;
    # row 3: change +2: gain 0.5 + (2 - 0.5)/2 = 1.25, loss 0.25 -> 100*1.25/1.5.
    np.testing.assert_allclose(f["rsi"][2:4], [50.0, 100 * 1.25 / 1.5])
    assert np.isnan(f["rsi"][:2]).all()
    # True range from row 1: max(2, |12-10|, |10-10|) = 2, then 2, 3, 2.
    # ATR period 2: seed mean(2, 2) = 2 at row 2; row 3: 2 + (3 - 2)/2 = 2.5.
    np.testing.assert_allclose(f["atr"][2:5], [2.0, 2.5, 2.5 + (2 - 2.5) / 2])
    # Rolling window 2 over (12, 12): std 0 -> z-score and %b undefined (NaN).
    assert f["rolling_std"][4] == 0.0
    assert np.isnan(f["zscore"][4]) and np.isnan(f["bollinger_pctb"][4])
    # window 2 over (10, 12): mean 11, sample std sqrt(2), z = 1/sqrt(2).
    assert f["zscore"][3] == pytest.approx(1 / np.sqrt(2))
    # realised vol over 2 returns at row 2: sqrt(log(1.1)^2 + log(10/11)^2).
    assert f["realized_vol"][2] == pytest.approx(np.hypot(np.log(1.1), np.log(10 / 11)))
    assert np.isnan(f["realized_vol"][:2]).all()


def test_flat_market_gives_neutral_rsi_not_zero() -> None:
    close = np.r_[np.full(20, 50.0), 51.0]
    bars = {"high": close, "low": close, "close": close}
    f = features(bars, rsi_period=14)
    np.testing.assert_array_equal(f["rsi"][14:20], 50.0)
    assert f["rsi"][20] == 100.0


def test_warm_up_rows_are_nan_and_frame_layout() -> None:
    f = features(_bars(60, seed=3))
    assert isinstance(f, FeatureFrame) and len(f) == 60
    assert f.columns == FEATURE_COLUMNS and f.values.shape == (60, len(FEATURE_COLUMNS))
    first_defined = {"log_return": 1, "rolling_mean": 19, "rolling_std": 19, "zscore": 19,
                     "ema": 19, "rsi": 14, "macd": 25, "macd_signal": 33, "macd_hist": 33,
                     "bollinger_pctb": 19, "atr": 14, "realized_vol": 20}
    for name, row in first_defined.items():
        col = f[name]
        assert np.isnan(col[:row]).all(), name
        assert np.isfinite(col[row:]).all(), name
    assert set(f.to_dict()) == set(FEATURE_COLUMNS)
    with pytest.raises(KeyError, match="nope"):
        f["nope"]


def test_short_input_is_all_nan_where_history_is_missing() -> None:
    f = features(_bars(5, seed=1))
    assert np.isnan(f["macd_signal"]).all() and np.isnan(f["rsi"]).all()
    assert np.isfinite(f["log_return"][1:]).all()


def test_input_forms_agree() -> None:
    bars = _bars(200, seed=9)
    structured = np.zeros(200, dtype=[(n, "f8") for n in ("open", "high", "low", "close",
                                                          "volume")])
    for i, name in enumerate(("open", "high", "low", "close", "volume")):
        structured[name] = bars[:, i]
    a = features(bars).values
    b = features(structured).values
    c = features({"high": bars[:, 1], "low": bars[:, 2], "close": bars[:, 3]}).values
    d = features(bars.astype(np.float32).astype(np.float64)).values
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert features(bars.astype(np.float32)).values.dtype == np.float64
    assert np.array_equal(np.isnan(a), np.isnan(d))


@pytest.mark.parametrize(
    ("ohlcv", "kwargs", "error", "match"),
    [
        (np.zeros((10, 4)), {}, ValueError, r"ohlcv: expected a \(bars, 5\)"),
        (np.ones((0, 5)), {}, ValueError, "ohlcv: no bars"),
        (np.full((10, 5), np.nan), {}, ValueError, "ohlcv: column high contains NaN"),
        (np.zeros((10, 5)), {}, ValueError, "ohlcv: close must be > 0"),
        ({"high": [1.0], "close": [1.0]}, {}, ValueError, "ohlcv: mapping lacks column"),
        (np.ones((10, 5)), {"window": 1}, ValueError, "window: must be >= 2"),
        (np.ones((10, 5)), {"rsi_period": 0}, ValueError, "rsi_period: must be >= 1"),
        (np.ones((10, 5)), {"macd_fast": 26}, ValueError, "macd_fast: must be shorter"),
        (np.ones((10, 5)), {"bollinger_k": -1.0}, ValueError, "bollinger_k"),
        (np.ones((10, 5)), {"atr_period": 2.5}, TypeError, "atr_period: expected an int"),
    ],
)
def test_features_reject_bad_input(
    ohlcv: object, kwargs: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        features(ohlcv, **kwargs)  # type: ignore[arg-type]
