"""A PatternMatchResult's matches on the wire: four columns, exact round trips,
and a clear ProtocolError for anything else."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from midswarm.swarm import PatternMatchResult
from midswarm.swarm._protocol import Match
from midswarm.transport import PROTOCOL_VERSION, ProtocolError, decode, encode, unpack


def result(matches: list[Match]) -> PatternMatchResult:
    return PatternMatchResult(
        pattern_type="dtw_knn", pattern_vector=np.arange(8.0), similarity=0.5,
        confidence=0.25, expected_outcome=0.1, actual_outcome=None, compute_time_ms=1.5,
        market_context={"k": 3}, matches=matches)


MATCHES = [Match(2**40 + 3, 0.125, 0.8, -0.5), Match(7, 1.0, 0.5, 0.0),
           Match(0, 2.5, 0.2857142857142857, 3.0)]


@pytest.mark.parametrize("matches", [MATCHES, []], ids=["three", "none"])
def test_matches_round_trip_exactly(matches: list[Match]) -> None:
    back = decode(encode(result(matches)), PatternMatchResult)
    assert back.matches == matches
    assert all(type(m.pattern_id) is int and type(m.distance) is float for m in back.matches)


def test_matches_travel_as_columns() -> None:
    body = unpack(encode(result(MATCHES)))[2]
    assert body["matches"] == [[m.pattern_id for m in MATCHES], [m.distance for m in MATCHES],
                               [m.similarity for m in MATCHES], [m.outcome for m in MATCHES]]


def _with_matches(value: Any) -> bytes:
    body = unpack(encode(result(MATCHES)))[2]
    body["matches"] = value
    body["pattern_vector"] = list(body["pattern_vector"])
    return msgpack.packb([PROTOCOL_VERSION, "swarm.pattern_result", body])


@pytest.mark.parametrize("value", [
    [{"pattern_id": 1, "distance": 0.5, "similarity": 0.5, "outcome": 0.0}],  # version 1 form
    [[1, 2], [0.5, 0.5], [0.5, 0.5]],  # three columns
    [[1, 2], [0.5], [0.5, 0.5], [0.0, 0.0]],  # ragged
    [[1.5], [0.5], [0.5], [0.0]],  # a fractional id
    [["7"], [0.5], [0.5], [0.0]],  # an id as text
    [[1], ["0.5"], [0.5], [0.0]],  # a distance as text
    "matches",
], ids=["maps", "three-columns", "ragged", "float-id", "text-id", "text-distance", "text"])
def test_malformed_matches_are_a_protocol_error(value: Any) -> None:
    with pytest.raises(ProtocolError, match="matches"):
        decode(_with_matches(value))
