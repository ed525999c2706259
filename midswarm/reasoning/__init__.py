"""Durable learning memory and vector search on SQLite.

:class:`PatternStore` keeps vectors with flat metadata and answers exact
top-k queries (cosine or L2) with metadata filters; an HNSW index is optional.
:class:`ReasoningBank` records :class:`Experience` objects, judges them into
:class:`Verdict` objects, suggests :class:`AdaptationCommand` objects for agents
that keep getting it wrong, distills :class:`MemoryItem` lessons and retrieves
them by similarity, recency and reliability with MMR diversity.

Both are single SQLite files in WAL mode: every write has committed when the
call returns, so it survives the process being killed; one writer at a time,
any number of ``readonly=True`` readers beside it.  This package imports
nothing else of midswarm.
"""

from ._adapt import DEFAULT_PARAMETERS, PARAMETER_LIMITS, THRESHOLD_STEP
from ._bank import ReasoningBank
from ._errors import SchemaError, WriterLockedError
from ._patternstore import PatternStore, StoredVector
from ._types import (
    AdaptationCommand,
    ConsolidationReport,
    Experience,
    Hit,
    MemoryItem,
    ParameterChange,
    RetrievalWeights,
    Verdict,
)

__all__ = [
    "AdaptationCommand",
    "ConsolidationReport",
    "DEFAULT_PARAMETERS",
    "Experience",
    "Hit",
    "MemoryItem",
    "PARAMETER_LIMITS",
    "ParameterChange",
    "PatternStore",
    "ReasoningBank",
    "RetrievalWeights",
    "SchemaError",
    "StoredVector",
    "THRESHOLD_STEP",
    "Verdict",
    "WriterLockedError",
]
