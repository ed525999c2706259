"""The reasoning value types survive the wire codec's converter and msgpack.

The swarm layer registers them as messages; this checks, without registering
any tag, that every field type is one the shared cattrs converter and the
msgpack packer handle.
"""

from __future__ import annotations

import numpy as np
import pytest

from midswarm.reasoning import (
    AdaptationCommand,
    ConsolidationReport,
    Experience,
    Hit,
    MemoryItem,
    ParameterChange,
    RetrievalWeights,
    Verdict,
)
from midswarm.transport import converter, pack, unpack

change = ParameterChange("similarity_threshold", 0.8, 0.82, "raise it")
VALUES = [
    Hit(7, 0.5, {"sym": "AAPL", "t": 3, "live": True, "x": 0.25}),
    Experience("pm-1", "predict", 0.01, -0.02, 0.9, 0.8,
               {"symbol": "AAPL", "window": 20, "vol": 0.3, "live": False}, None, 12.5),
    Experience("pm-1", "predict", 0.01, -0.02, 0.9, 0.8),
    change,
    Verdict(0.2, True, False, False, [change], 0.6),
    AdaptationCommand(3, "pm-1", [change, ParameterChange("k", 10.0, 12.0, "r")], "why",
                      0.4, 25, 1.7e9),
    MemoryItem(1, "t", "d", "c", 0.6, 2, 1.0, 2.0, 1.5, "failure", "[]", 4, 3),
    RetrievalWeights(),
    ConsolidationReport(1, 2, 3, 4),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(value):
    back = converter.structure(unpack(pack(converter.unstructure(value))), type(value))
    assert back == value


def test_experience_vector_round_trips():
    e = Experience("pm-1", "predict", 0.01, 0.02, 0.9, 0.8, {}, np.arange(4, dtype=np.float32),
                   1.0)
    back = converter.structure(unpack(pack(converter.unstructure(e))), Experience)
    assert back.vector.dtype == np.float32 and back.vector.tolist() == [0, 1, 2, 3]
    assert back == e  # vectors are left out of equality (eq=False)
