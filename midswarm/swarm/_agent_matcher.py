"""The pattern matcher: banded DTW k-NN over a shard of the pattern library.

Theory of operation
-------------------
A :class:`PatternMatcher` holds one shard of the library in memory: pattern
vectors (all of one length), their known outcomes and their ids.  The
coordinator holds the durable copy and sends shards with
:class:`PatternLibraryAdd`; a restarted matcher starts empty.

A :class:`PatternMatchTask` is answered by :func:`summarise` applied to the
shard's exact top-k under banded DTW with z-normalisation (the search of
``dtw_knn(window, library, k, window=band, znorm=True)``), ordered by
``(distance, pattern_id)``.  A pattern's distance to a query does not depend
on what else is searched with it, so the top-k of a union of pattern sets is
the top-k of their pooled top-k lists.  The matcher uses that twice.  Inside a
shard, patterns live in two prepared libraries: a large one, prepared again
only when the recent additions reach a quarter of its size, and the recent
additions, cheap to prepare after every add.  Across shards,
:func:`merge_pattern_results` merges the shards' top-k into the global top-k
exactly, and recomputes the summary with the same :func:`summarise`, summing
in the same order: sharded and unsharded answers are equal to the last bit.

The figures, for matches sorted by ``(distance, pattern_id)`` of query length
``m``:

* ``similarity`` of a match at DTW distance ``d`` is ``1 / (1 + d / sqrt(m))``
  (1 for an identical shape, about 0.5 for unrelated z-normalised shapes);
  the result's ``similarity`` is the best match's (0 without matches);
* the *qualifying* matches are those with ``similarity >= similarity_threshold``;
* ``expected_outcome`` is the similarity-weighted mean outcome of the
  qualifying matches (0 when none qualify);
* ``confidence`` is ``|sum(s_i * sign(o_i))| / sum(s_j)``, the first sum over
  the qualifying matches and the second over all k matches: how strongly the
  close matches agree on a direction, discounted when few of the k qualify;
  it lies in [0, 1] (0 without matches);
* ``market_context["actionable"]`` is true when at least one match qualifies
  and ``confidence >= confidence_threshold``: a prediction worth acting on.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..actors import Actor
from ..kernels import PatternLibrary
from ..reasoning import PARAMETER_LIMITS, AdaptationCommand
from ._agent_util import check_threads, run_kernel, wire_copy
from ._protocol import Match, PatternLibraryAdd, PatternMatchResult, PatternMatchTask

__all__ = [
    "MATCHER_DEFAULTS",
    "MATCHER_LIMITS",
    "PatternMatcher",
    "check_matcher_parameters",
    "merge_pattern_results",
    "similarity_of",
    "summarise",
]

#: Inclusive bounds of the matcher's parameters (the ReasoningBank's vocabulary).
MATCHER_LIMITS: dict[str, tuple[float, float]] = dict(PARAMETER_LIMITS)
#: The matcher's parameters when its factory is given none.
MATCHER_DEFAULTS: dict[str, float | int] = {
    "similarity_threshold": 0.80,
    "confidence_threshold": 0.60,
    "window": 8,
    "k": 10,
}
_WHOLE = ("window", "k")
PATTERN_TYPE = "dtw_knn"


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def check_matcher_parameters(values: Mapping[str, Any], name: str = "parameters"
                             ) -> dict[str, float | int]:
    """Validate matcher parameters: known names, numbers inside :data:`MATCHER_LIMITS`,
    whole ``window`` and ``k``.  Returns them (a new dict) with ``window``/``k`` as ints.

    Raises :class:`ValueError` (or :class:`TypeError`) naming the bad entry.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"{name} must be a mapping, got {type(values).__name__}")
    # Every pattern task carries the same few parameters, checked by each
    # matcher and again by the merge: remember the last answers.  The key
    # holds each value's type, so 1, 1.0 and True are told apart.
    key: tuple[Any, ...] | None = (name, *((k, type(v), v) for k, v in values.items()))
    try:
        known = _CHECKED.get(key)  # type: ignore[arg-type]
    except TypeError:  # an unhashable value (the check below refuses it)
        key, known = None, None
    if known is not None:
        return dict(known)
    out: dict[str, float | int] = {}
    for key_, value in values.items():
        if key_ not in MATCHER_LIMITS:
            raise ValueError(f"{name}: unknown matcher parameter {key_!r} "
                             f"(known: {', '.join(MATCHER_LIMITS)})")
        number = _number(f"{name}[{key_!r}]", value)
        lo, hi = MATCHER_LIMITS[key_]
        if not lo <= number <= hi:
            raise ValueError(f"{name}[{key_!r}] = {value!r} is outside [{lo:g}, {hi:g}]")
        if key_ in _WHOLE:
            if not number.is_integer():
                raise ValueError(f"{name}[{key_!r}] must be a whole number, got {value!r}")
            out[key_] = int(number)
        else:
            out[key_] = number
    if key is not None:
        if len(_CHECKED) >= 64:
            _CHECKED.clear()
        _CHECKED[key] = out
    return dict(out)


_CHECKED: dict[tuple[Any, ...], dict[str, float | int]] = {}


def similarity_of(distance: float, length: int) -> float:
    """``1 / (1 + distance / sqrt(length))``: the similarity of a match."""
    return 1.0 / (1.0 + float(distance) / math.sqrt(length))


def _sign(x: float) -> float:
    return float((x > 0) - (x < 0))


def summarise(query: np.ndarray, matches: list[Match], params: Mapping[str, Any],
              compute_time_ms: float, context: Mapping[str, Any], library_size: int
              ) -> PatternMatchResult:
    """The :class:`PatternMatchResult` of ``matches`` (sorted by distance, then id)
    under ``params`` (see the module docstring for the formulas)."""
    sim_threshold = float(params["similarity_threshold"])
    weight_all = 0.0
    weight_q = 0.0
    signed_q = 0.0
    outcome_q = 0.0
    qualifying = 0
    for m in matches:
        weight_all += m.similarity
        if m.similarity >= sim_threshold:
            qualifying += 1
            weight_q += m.similarity
            signed_q += m.similarity * _sign(m.outcome)
            outcome_q += m.similarity * m.outcome
    expected = outcome_q / weight_q if qualifying else 0.0
    confidence = abs(signed_q) / weight_all if weight_all > 0 else 0.0
    actionable = qualifying > 0 and confidence >= float(params["confidence_threshold"])
    market_context = dict(context)
    market_context.update(
        k=int(params["k"]), window=int(params["window"]),
        similarity_threshold=float(params["similarity_threshold"]),
        confidence_threshold=float(params["confidence_threshold"]),
        qualifying=qualifying, actionable=actionable, library_size=int(library_size))
    return PatternMatchResult(
        pattern_type=PATTERN_TYPE, pattern_vector=query,
        similarity=matches[0].similarity if matches else 0.0,
        confidence=confidence, expected_outcome=expected, actual_outcome=None,
        compute_time_ms=compute_time_ms, market_context=market_context, matches=list(matches))


def merge_pattern_results(results: list[PatternMatchResult], k: int,
                          params: Mapping[str, Any] | None = None) -> PatternMatchResult:
    """Merge the per-shard answers to one query into the global top-``k`` answer.

    Matches are pooled, a pattern id seen twice is kept once (at its smaller
    distance), and the first ``k`` by ``(distance, pattern_id)`` are kept; the
    summary is recomputed by :func:`summarise` under ``params`` (default: the
    parameters the first result reports in its ``market_context``; explicit
    entries override them).  ``compute_time_ms`` is the slowest shard's (the
    shards search in parallel); ``library_size`` is the sum over the shards.
    The answer equals what one matcher holding every shard returns.

    Raises :class:`ValueError` for no results, ``k < 1`` or bad parameters.
    """
    if not results:
        raise ValueError("results: need at least one shard's result to merge")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    first = results[0]
    effective: dict[str, Any] = {
        key: first.market_context[key] for key in MATCHER_LIMITS if key in first.market_context}
    if params:
        effective.update(check_matcher_parameters(params, "params"))
    effective["k"] = int(k)
    missing = [key for key in MATCHER_LIMITS if key not in effective]
    if missing:
        raise ValueError(f"params: missing {', '.join(missing)} (not given and not reported "
                         f"by the shards' market_context)")
    best: dict[int, Match] = {}
    for result in results:
        for m in result.matches:
            seen = best.get(m.pattern_id)
            if seen is None or m.distance < seen.distance:
                best[m.pattern_id] = m
    merged = sorted(best.values(), key=lambda m: (m.distance, m.pattern_id))[: int(k)]
    context = {key: value for key, value in first.market_context.items()
               if key not in ("qualifying", "actionable", "library_size")}
    size = sum(int(r.market_context.get("library_size", 0)) for r in results)
    return summarise(first.pattern_vector, merged, effective,
                     max(r.compute_time_ms for r in results), context, size)


def _as_array(name: str, value: Any, ndim: int, dtype: Any = np.float64) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected an array of numbers ({exc})") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {arr.shape}")
    return arr


def _top_k(library: PatternLibrary, query: np.ndarray, k: int, ids: np.ndarray
           ) -> list[tuple[int, float]]:
    """``(row, distance)`` of the first ``k`` rows of ``library`` by ``(distance, id)``.

    The kernel orders by *squared* distance, then row; two squared distances
    one ulp apart can have the same square root, and then the kernel's order
    and the ``(distance, id)`` order a merge of shards sees differ.  So ask for
    more rows until every row as close as the k-th one is in hand (the first
    extra row settles it unless there is such a tie), and sort by
    ``(distance, id)`` here.
    """
    n = len(library)
    want = min(k + 1, n)
    rows, distances = library.knn(query, want)
    while want < n and distances.shape[0] > k and distances[-1] == distances[k - 1]:
        want = min(2 * want, n)
        rows, distances = library.knn(query, want)
    ranked = sorted(zip(rows.tolist(), distances.tolist(), strict=True),
                    key=lambda rd: (rd[1], int(ids[rd[0]])))
    return ranked[:k]


def _search(parts: tuple[_Part, ...], query: np.ndarray, k: int, band: int) -> list[Match]:
    pooled = [hit for part in parts for hit in part.top_k(query, k, band)]
    pooled.sort(key=lambda hit: (hit[0], hit[1]))
    length = query.shape[0]
    return [Match(pattern_id=i, distance=d, similarity=similarity_of(d, length), outcome=o)
            for d, i, o in pooled[:k]]


class _Part:
    """Patterns searched as one prepared :class:`PatternLibrary`."""

    def __init__(self, length: int) -> None:
        self.vectors = np.empty((0, length))
        self.ids = np.empty(0, dtype=np.int64)
        self.outcomes = np.empty(0)
        self._library: PatternLibrary | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def extend(self, vectors: np.ndarray, ids: np.ndarray, outcomes: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(np.concatenate([self.vectors, vectors]))
        self.ids = np.concatenate([self.ids, ids])
        self.outcomes = np.concatenate([self.outcomes, outcomes])
        self._library = None

    def top_k(self, query: np.ndarray, k: int, band: int) -> list[tuple[float, int, float]]:
        """``(distance, id, outcome)`` of the part's top ``k``."""
        if not len(self):
            return []
        library = self._library
        if library is None or library.window != band:
            library = self._library = PatternLibrary(self.vectors, band, True)
        return [(d, int(self.ids[r]), float(self.outcomes[r]))
                for r, d in _top_k(library, query, k, self.ids)]


class PatternMatcher(Actor):
    """Answers :class:`PatternMatchTask` from its shard of the pattern library.

    Messages (see the module docstring for the figures):

    * :class:`PatternLibraryAdd` -> the shard's size after the add.  An id the
      shard already holds is skipped (a re-delivered add changes nothing).
    * :class:`PatternMatchTask` -> :class:`PatternMatchResult` over the shard;
      an empty shard answers with no matches, similarity 0 and confidence 0.
      ``task.params`` overrides the parameters for this task only.
    * :class:`AdaptationCommand` -> the parameters after applying it.  Each
      change's ``suggested`` value is clamped into :data:`MATCHER_LIMITS`
      (``window`` and ``k`` rounded to whole numbers); a change of an unknown
      parameter is skipped; a command whose id is not larger than the last
      applied one is ignored (stale or repeated).  The command's ``agent_id``
      is not checked: routing it is the coordinator's business.
    * ``"parameters"`` -> the current parameters (a new dict);
      ``"stats"`` -> library size and counts of applied/ignored commands.

    ``parameters`` may hold the four matcher parameters (checked against
    :data:`MATCHER_LIMITS`; the rest default to :data:`MATCHER_DEFAULTS`) and
    ``threads``, the numba threads of one search (default 1, see
    :func:`run_kernel`); other keys are kept in :attr:`extra` and otherwise
    ignored, so a coordinator can pass its own settings alongside.

    A malformed message raises :class:`ValueError`/:class:`TypeError` naming
    the problem, which (actor semantics) fails the ``ask`` and restarts the
    matcher with an empty shard: the coordinator re-sends its shard.
    """

    def __init__(self, agent_id: str, parameters: Mapping[str, Any] | None = None) -> None:
        given = dict(parameters or {})
        known = {k: v for k, v in given.items() if k in MATCHER_LIMITS}
        self.agent_id = agent_id
        self.extra = {k: v for k, v in given.items() if k not in MATCHER_LIMITS}
        self.threads = check_threads(self.extra.pop("threads", 1))
        self.params: dict[str, float | int] = dict(MATCHER_DEFAULTS)
        self.params.update(check_matcher_parameters(known))
        # Two parts: a large one, prepared rarely, and the recent additions,
        # cheap to prepare after every add; merged into the large one when
        # they reach a quarter of it.  The answer is the same as from one part.
        self._length: int | None = None
        self._main: _Part | None = None
        self._recent: _Part | None = None
        self._known: set[int] = set()
        self._last_command = 0
        self.commands_applied = 0
        self.commands_ignored = 0

    def __len__(self) -> int:
        return len(self._known)

    @classmethod
    async def warm_up(cls) -> None:
        """Have numba load (or compile) the search kernels now, in this process.

        A throwaway matcher gets random-walk patterns in two adds -- enough
        for both parts of a shard, so every kernel a real search calls runs
        -- and answers one query; the messages go through the codec as real
        ones do.  Nothing of it is kept.  An agent calls this before its hello
        so that the first real tasks do not pay for loading the kernels
        (about 0.2 s on an idle machine, seconds on a busy one).
        """
        rng = np.random.default_rng(0)
        walks = np.cumsum(rng.normal(size=(300, 24)), axis=1)
        outcomes = rng.normal(0.0, 0.01, size=300)
        ids = np.arange(300, dtype=np.int64)
        matcher = cls("warm-up")
        for part in (slice(0, 260), slice(260, 300)):
            await matcher.handle(wire_copy(PatternLibraryAdd(walks[part], outcomes[part],
                                                             ids[part])))
        await matcher.handle(wire_copy(PatternMatchTask(window=walks[7] + 0.01, horizon=8)))

    async def handle(self, msg: Any) -> Any:
        if isinstance(msg, PatternMatchTask):
            return await self._match(msg)
        if isinstance(msg, PatternLibraryAdd):
            return self._add(msg)
        if isinstance(msg, AdaptationCommand):
            return self._adapt(msg)
        if msg == "parameters":
            return dict(self.params)
        if msg == "stats":
            return {"library_size": len(self), "commands_applied": self.commands_applied,
                    "commands_ignored": self.commands_ignored}
        raise TypeError(f"PatternMatcher cannot handle {type(msg).__name__} message {msg!r}")

    # -- the shard ----------------------------------------------------------------

    def _add(self, msg: PatternLibraryAdd) -> int:
        vectors = _as_array("PatternLibraryAdd.vectors", msg.vectors, 2)
        outcomes = _as_array("PatternLibraryAdd.outcomes", msg.outcomes, 1)
        ids_raw = _as_array("PatternLibraryAdd.ids", msg.ids, 1, dtype=None)
        count = vectors.shape[0]
        if outcomes.shape[0] != count or ids_raw.shape[0] != count:
            raise ValueError(f"PatternLibraryAdd: {count} vectors but {outcomes.shape[0]} "
                             f"outcomes and {ids_raw.shape[0]} ids")
        if count and ids_raw.dtype.kind not in "iu":
            raise TypeError(f"PatternLibraryAdd.ids must be integers, got dtype {ids_raw.dtype}")
        ids = ids_raw.astype(np.int64)
        if count == 0:
            return len(self)
        if vectors.shape[1] == 0:
            raise ValueError("PatternLibraryAdd.vectors: patterns of length 0")
        if not (np.isfinite(vectors).all() and np.isfinite(outcomes).all()):
            raise ValueError("PatternLibraryAdd: vectors and outcomes must be finite")
        if self._length is not None and vectors.shape[1] != self._length:
            raise ValueError(f"PatternLibraryAdd.vectors: length {vectors.shape[1]} differs from "
                             f"the shard's patterns (length {self._length})")
        if np.unique(ids).shape[0] != count:
            raise ValueError("PatternLibraryAdd.ids: an id appears twice in one add")
        fresh = np.array([i not in self._known for i in ids.tolist()], dtype=bool)
        if not fresh.any():
            return len(self)
        if self._main is None or self._recent is None:
            self._length = int(vectors.shape[1])
            self._main = _Part(self._length)
            self._recent = _Part(self._length)
        self._recent.extend(vectors[fresh], ids[fresh], outcomes[fresh])
        self._known.update(ids[fresh].tolist())
        if len(self._recent) >= max(256, len(self._main) // 4):
            self._main.extend(self._recent.vectors, self._recent.ids, self._recent.outcomes)
            self._recent = _Part(int(vectors.shape[1]))
        return len(self)

    # -- queries ------------------------------------------------------------------

    def _task_parameters(self, task: PatternMatchTask) -> dict[str, float | int]:
        params = dict(self.params)
        if task.params:
            params.update(check_matcher_parameters(task.params, "PatternMatchTask.params"))
        return params

    async def _match(self, task: PatternMatchTask) -> PatternMatchResult:
        query = _as_array("PatternMatchTask.window", task.window, 1)
        if query.shape[0] == 0 or not np.isfinite(query).all():
            raise ValueError("PatternMatchTask.window must be a non-empty finite series")
        params = self._task_parameters(task)
        started = time.perf_counter()
        matches: list[Match] = []
        if self._main is not None and self._recent is not None:
            if query.shape[0] != self._length:
                raise ValueError(f"PatternMatchTask.window: length {query.shape[0]} differs "
                                 f"from the library's patterns (length {self._length})")
            matches = await run_kernel(self.threads, _search, (self._main, self._recent),
                                       query, int(params["k"]), int(params["window"]))
        elapsed = (time.perf_counter() - started) * 1000.0
        return summarise(query, matches, params, elapsed, task.context, len(self))

    # -- adaptation ---------------------------------------------------------------

    def _adapt(self, cmd: AdaptationCommand) -> dict[str, float | int]:
        if cmd.id <= self._last_command:
            self.commands_ignored += 1
            return dict(self.params)
        self._last_command = cmd.id
        self.commands_applied += 1
        for change in cmd.changes:
            if change.parameter not in MATCHER_LIMITS:
                continue
            try:
                value = _number("suggested", change.suggested)
            except (TypeError, ValueError):
                continue
            lo, hi = MATCHER_LIMITS[change.parameter]
            value = min(max(value, lo), hi)
            if change.parameter in _WHOLE:
                self.params[change.parameter] = int(round(value))
            else:
                self.params[change.parameter] = value
        return dict(self.params)
