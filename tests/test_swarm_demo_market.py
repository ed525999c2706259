"""The demo's market data: the synthetic market and CSV loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from midswarm.swarm._market import (
    MOTIFS,
    REGIMES,
    MarketDataError,
    load_csv,
    synthetic_market,
)


def test_synthetic_market_is_seeded_and_well_formed() -> None:
    a = synthetic_market(7, assets=2, bars=1500)
    b = synthetic_market(7, assets=2, bars=1500)
    c = synthetic_market(8, assets=2, bars=1500)
    assert a.assets == ["A0", "A1"] and len(a) == 1500
    for asset in a.assets:
        np.testing.assert_array_equal(a.bars[asset], b.bars[asset])
        assert not np.array_equal(a.bars[asset], c.bars[asset])
        o, h, lo, cl, v = a.bars[asset].T
        assert (h >= np.maximum(o, cl)).all() and (lo <= np.minimum(o, cl)).all()
        assert (lo > 0).all() and (v >= 0).all()
        assert set(np.unique(a.regimes[asset])) <= set(range(len(REGIMES)))
        assert len(np.unique(a.regimes[asset])) > 1  # it does switch regimes
    assert a.motifs == b.motifs


def test_motifs_are_followed_by_their_characteristic_move() -> None:
    market = synthetic_market(3, assets=3, bars=4000)
    assert len(market.motifs) > 50
    assert {e.motif for e in market.motifs} == set(MOTIFS)
    agree = 0
    for event in market.motifs:
        close = market.bars[event.asset][:, 3]
        end = event.start + event.length - 1
        move = np.log(close[end + event.horizon] / close[end])
        agree += np.sign(move) == np.sign(MOTIFS[event.motif][1])
    # noise and the common factor flip some of them, not most
    assert agree / len(market.motifs) > 0.75


def test_synthetic_market_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="assets"):
        synthetic_market(0, assets=0)
    with pytest.raises(ValueError, match="motif_rate"):
        synthetic_market(0, motif_rate=1.5)
    with pytest.raises(ValueError, match="stay"):
        synthetic_market(0, stay=1.0)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_csv_with_assets_iso_times_and_any_column_order(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv",
                 "Asset,Timestamp,Open,High,Low,Close,Volume,note\n"
                 "X,2024-01-01T00:00:00Z,10,11,9,10.5,100,a\n"
                 "Y,2024-01-01T00:00:00Z,20,21,19,20.5,200,\n"
                 "\n"
                 "X,2024-01-01T00:01:00,10.5,12,10,11,150,b\n")
    market = load_csv(path)
    assert market.assets == ["X", "Y"]
    np.testing.assert_array_equal(market.bars["X"], [[10, 11, 9, 10.5, 100],
                                                     [10.5, 12, 10, 11, 150]])
    assert market.timestamps["X"][1] - market.timestamps["X"][0] == 60.0
    assert market.bars["Y"].shape == (1, 5) and market.skipped == []


def test_bad_rows_are_reported_by_line_number(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv",
                 "timestamp,open,high,low,close,volume\n"
                 "1,10,11,9,10.5,100\n"         # line 2: fine
                 "2,10,9,11,10,100\n"           # line 3: high < low
                 "3,10,11,9,abc,100\n"          # line 4: close not a number
                 "4,10,11,9,10\n"               # line 5: missing field
                 "5,10,11,9,10,-1\n"            # line 6: negative volume
                 "1,10,11,9,10,5\n"             # line 7: time goes backwards
                 "7,0,11,9,10,5\n"              # line 8: price 0
                 "8,10,11,9,10,5\n")            # line 9: fine
    with pytest.raises(MarketDataError) as info:
        load_csv(path)
    err = info.value
    assert [p.line for p in err.problems] == [3, 4, 5, 6, 7, 8]
    text = str(err)
    for fragment in ("line 3: high 9 is below low 11", "line 4: close 'abc' is not a number",
                     "line 5: 5 field(s), expected 6", "line 6: volume -1 is negative",
                     "line 7: timestamp '1' is not later", "line 8: prices must be > 0"):
        assert fragment in text
    skipped = load_csv(path, skip_bad=True)
    assert [p.line for p in skipped.skipped] == [3, 4, 5, 6, 7, 8]
    np.testing.assert_array_equal(skipped.timestamps["CSV"], [1.0, 8.0])


def test_a_file_without_the_needed_columns_or_bars_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MarketDataError, match="line 1 .*lacks column.*volume"):
        load_csv(write(tmp_path / "a.csv", "timestamp,open,high,low,close\n1,1,1,1,1\n"))
    with pytest.raises(MarketDataError, match="empty"):
        load_csv(write(tmp_path / "b.csv", ""))
    with pytest.raises(MarketDataError, match="no usable bars"):
        load_csv(write(tmp_path / "c.csv", "timestamp,open,high,low,close,volume\n"))
    with pytest.raises(MarketDataError, match="no usable bars .1 bad row"):
        load_csv(write(tmp_path / "d.csv", "timestamp,open,high,low,close,volume\n"
                                           "1,1,1,1,x,1\n"), skip_bad=True)
    with pytest.raises(FileNotFoundError):
        load_csv(tmp_path / "missing.csv")
