"""The sharded pattern library and scatter-gather queries.

Theory of operation
-------------------
The coordinator keeps every pattern (vector, known outcome, id) durably in a
:class:`~midswarm.reasoning.PatternStore` (``patterns.sqlite`` under the
store directory, L2 metric, float32 as the store keeps them) and a copy in
memory.  Each pattern is *owned* by exactly one live pattern matcher, which
holds it in its shard (sent with :class:`PatternLibraryAdd`).  Patterns are
only ever added to a matcher, never taken away, so the invariant "every
pattern is in exactly one live member's shard" is kept like this:

* new patterns go to the members with the fewest patterns;
* a matcher that joins gets the patterns nobody owns (those added while no
  matcher was connected);
* a matcher that leaves (its agent disconnected) has its patterns handed to
  the remaining members;
* a matcher that was restarted by its agent's supervisor (it starts empty) is
  sent its shard again.

Membership changes are serialised by a lock and bracketed by a *seqlock*
epoch: odd while a change is under way, even when settled.  A query
(:meth:`PatternShards.scatter`) waits for an even epoch, sends the task to
every member at once (one credit on each, reserved all-or-nothing), and
accepts the answers only if the epoch did not move meanwhile; otherwise, or
if a member failed to answer, it tries again on the new membership.  The
members' top-k lists are merged by
:func:`~midswarm.swarm._agent_matcher.merge_pattern_results`, which keeps the
global top-k by ``(distance, pattern_id)``: the answer is the one a single
matcher holding the whole library gives, provided every matcher uses the same
parameters (pass ``k``/``window``/thresholds in ``task.params`` when matchers
may have been adapted differently).  A query concurrent with
:meth:`PatternShards.add` may see part of that batch.
"""

from __future__ import annotations

import heapq
import logging
import os
from typing import Any

import numpy as np
import outcome
import trio

from ..actors import ActorFailed, encode_payload
from ..reasoning import PatternStore
from ..transport import transmit_together
from ._agent_matcher import merge_pattern_results
from ._config import CoordinatorConfig
from ._delivery import DeliveryStats, Dispatcher
from ._errors import NoAgentAvailable, TaskUndeliverable
from ._protocol import PatternLibraryAdd, PatternMatchResult, PatternMatchTask
from ._proxy import RemoteActor

__all__ = ["PatternShards", "ScatterResult"]

log = logging.getLogger("midswarm.swarm")

#: Bytes of patterns per message that carries them (PatternLibraryAdd to a
#: matcher, AddPatterns from a client): far below the frame limit.
_ADD_BYTES = 2 << 20


def patterns_per_message(dim: int) -> int:
    """How many float64 patterns of length ``dim`` (with an outcome and an id
    each) one message carries."""
    return max(1, _ADD_BYTES // (8 * dim + 16))


def check_patterns(vectors: Any, outcomes: Any) -> tuple[np.ndarray, np.ndarray]:
    """``vectors`` (one pattern per row) and their ``outcomes`` as float64
    arrays; raises :class:`ValueError` for mismatched shapes or non-finite
    values."""
    vecs = np.asarray(vectors, dtype=np.float64)
    outs = np.asarray(outcomes, dtype=np.float64)
    if vecs.ndim != 2 or vecs.shape[0] == 0 or vecs.shape[1] == 0:
        raise ValueError(f"vectors must be a non-empty 2-D array (one pattern per row), "
                         f"got shape {vecs.shape}")
    if outs.shape != (vecs.shape[0],):
        raise ValueError(f"outcomes must have one value per pattern ({vecs.shape[0]}), "
                         f"got shape {outs.shape}")
    if not (np.isfinite(vecs).all() and np.isfinite(outs).all()):
        raise ValueError("vectors and outcomes must be finite")
    return vecs, outs


class ScatterResult:
    """A merged answer and the matchers credited with it."""

    __slots__ = ("result", "contributors")

    def __init__(self, result: PatternMatchResult, contributors: list[str]) -> None:
        self.result = result
        self.contributors = contributors


class _Round:
    """The outcomes of one scatter round: one per member; ``complete`` is set
    once all are in, so the scattering task is woken once, not per answer."""

    __slots__ = ("remaining", "answers", "error", "complete", "closed", "answered", "stats")

    def __init__(self, members: int, stats: DeliveryStats) -> None:
        self.remaining = members
        self.answers: dict[str, PatternMatchResult] = {}
        #: The first failure, or the first :class:`ActorFailed` among several.
        self.error: BaseException | None = None
        self.complete = trio.Event()
        self.closed = False
        self.answered = False
        self.stats = stats

    def on_settled(self, link: RemoteActor, result: outcome.Outcome[Any]) -> None:
        if self.closed:  # the caller gave up, or a round was already answered
            self.stats.count_unclaimed(result, self.answered)
            return
        if isinstance(result, outcome.Error):
            if self.error is None or isinstance(result.error, ActorFailed):
                self.error = result.error
        else:
            self.answers[link.name] = result.unwrap()
        self.remaining -= 1
        if self.remaining == 0:
            self.complete.set()


class PatternShards:
    """See the module docstring."""

    def __init__(self, dispatcher: Dispatcher, config: CoordinatorConfig,
                 store_dir: str) -> None:
        self._dispatcher = dispatcher
        self._config = config
        self._path = os.path.join(store_dir, "patterns.sqlite")
        self._store: PatternStore | None = None
        self._ids = np.empty(0, dtype=np.int64)
        self._vectors: np.ndarray | None = None
        self._outcomes = np.empty(0)
        self._row: dict[int, int] = {}
        self._owner: dict[int, str] = {}  # pattern id -> member name
        self._members: dict[str, RemoteActor] = {}  # name -> link, join order
        self._counts: dict[str, int] = {}
        self._lock = trio.Lock()
        self._epoch = 0
        self._settled = trio.Event()
        self._settled.set()
        self._changed = trio.Event()

    # -- the durable store ------------------------------------------------------------

    def open_existing(self) -> int:
        """Load the patterns of an existing store file; returns how many."""
        if not os.path.exists(self._path):
            return 0
        dim = _stored_dim(self._path)
        if dim is None:
            return 0
        store = PatternStore(self._path, dim, metric="l2")
        ids = store.ids()
        if ids:
            rows = [store.get(i) for i in ids]
            vectors = np.stack([r.vector for r in rows]).astype(np.float64)
            outcomes = np.array([float(r.metadata.get("outcome", 0.0)) for r in rows])
            self._append(np.asarray(ids, dtype=np.int64), vectors, outcomes)
        self._store = store
        return len(ids)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def dim(self) -> int | None:
        return None if self._vectors is None else int(self._vectors.shape[1])

    def _append(self, ids: np.ndarray, vectors: np.ndarray, outcomes: np.ndarray) -> None:
        start = len(self._ids)
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = vectors if self._vectors is None else np.concatenate(
            [self._vectors, vectors])
        self._outcomes = np.concatenate([self._outcomes, outcomes])
        for offset, ident in enumerate(ids.tolist()):
            self._row[ident] = start + offset

    def _write(self, vectors: np.ndarray, outcomes: np.ndarray) -> list[int]:
        if self._store is None:
            self._store = PatternStore(self._path, int(vectors.shape[1]), metric="l2")
        return self._store.add(vectors, [{"outcome": float(o)} for o in outcomes])

    async def add(self, vectors: Any, outcomes: Any) -> list[int]:
        """Store patterns durably and send each to its owner; returns their ids.

        Returns once every live owner has the new patterns in its shard.
        Raises :class:`ValueError` for mismatched shapes, non-finite values or
        a pattern length unlike the library's.
        """
        vecs, outs = check_patterns(vectors, outcomes)
        if self.dim is not None and vecs.shape[1] != self.dim:
            raise ValueError(f"vectors: patterns of length {vecs.shape[1]}, the library holds "
                             f"length {self.dim}")
        # Shards get exactly what the store keeps (float32), so a restarted
        # coordinator serves the same library.
        vecs = vecs.astype(np.float32).astype(np.float64)
        async with self._lock:
            ids = await trio.to_thread.run_sync(self._write, vecs, outs)
            id_arr = np.asarray(ids, dtype=np.int64)
            self._append(id_arr, vecs, outs)
            plan = self._assign(ids)
            await self._send_plan(plan)
        return ids

    # -- ownership ----------------------------------------------------------------------

    def _assign(self, ids: list[int]) -> dict[str, list[int]]:
        """Give each id to the member with the fewest patterns; returns member -> ids."""
        plan: dict[str, list[int]] = {}
        if not self._members:
            for ident in ids:
                self._owner.pop(ident, None)
            return plan
        heap = [(self._counts.get(name, 0), order, name)
                for order, name in enumerate(self._members)]
        heapq.heapify(heap)
        for ident in ids:
            count, order, name = heapq.heappop(heap)
            self._owner[ident] = name
            self._counts[name] = count + 1
            plan.setdefault(name, []).append(ident)
            heapq.heappush(heap, (count + 1, order, name))
        return plan

    async def _send_plan(self, plan: dict[str, list[int]]) -> None:
        """Send each member its new patterns; a member that fails is left to its
        own departure, which hands its patterns on."""
        async with trio.open_nursery() as nursery:
            for name, ids in plan.items():
                link = self._members.get(name)
                if link is not None:
                    nursery.start_soon(self._send_ids, link, ids)

    async def _send_ids(self, link: RemoteActor, ids: list[int]) -> None:
        if self._vectors is None or not ids:
            return
        rows = np.fromiter((self._row[i] for i in ids), dtype=np.int64, count=len(ids))
        per_msg = patterns_per_message(self._vectors.shape[1])
        for start in range(0, len(rows), per_msg):
            chunk = rows[start:start + per_msg]
            msg = PatternLibraryAdd(vectors=self._vectors[chunk],
                                    outcomes=self._outcomes[chunk], ids=self._ids[chunk])
            try:
                await self._dispatcher.call(link, msg, self._config.task_timeout)
            except ActorFailed as exc:
                log.error("pattern matcher %s refused its shard: %s", link.name, exc)
                return
            except Exception as exc:  # unreachable, timed out: it is leaving
                log.warning("could not send %d patterns to %s: %s", len(ids), link.name, exc)
                return

    def _begin(self) -> None:
        self._epoch += 1
        self._settled = trio.Event()

    def _end(self) -> None:
        self._epoch += 1
        self._settled.set()
        self._changed.set()
        self._changed = trio.Event()

    async def join(self, link: RemoteActor) -> None:
        """A matcher connected: make it a member and give it the unowned patterns."""
        async with self._lock:
            self._begin()
            try:
                self._members[link.name] = link
                self._counts[link.name] = 0
                unowned = [i for i in self._ids.tolist() if i not in self._owner]
                await self._send_plan(self._assign(unowned))
            finally:
                self._end()

    async def leave(self, link: RemoteActor) -> None:
        """A matcher disconnected: hand its patterns to the remaining members."""
        async with self._lock:
            if link.name not in self._members:
                return
            self._begin()
            try:
                del self._members[link.name]
                self._counts.pop(link.name, None)
                orphans = [i for i, owner in self._owner.items() if owner == link.name]
                await self._send_plan(self._assign(orphans))
            finally:
                self._end()

    async def refill(self, link: RemoteActor) -> None:
        """A matcher was restarted (it is empty now): send it its shard again."""
        async with self._lock:
            if link.name not in self._members:
                return
            self._begin()
            try:
                mine = [i for i, owner in self._owner.items() if owner == link.name]
                await self._send_plan({link.name: mine})
            finally:
                self._end()

    def forget(self, link: RemoteActor) -> None:
        """Drop a member without handing its patterns on (the coordinator is
        shutting down); they become unowned."""
        if self._members.pop(link.name, None) is None:
            return
        self._counts.pop(link.name, None)
        for ident in [i for i, owner in self._owner.items() if owner == link.name]:
            del self._owner[ident]
        self._epoch += 2
        self._changed.set()
        self._changed = trio.Event()

    def shard_sizes(self) -> dict[str, int]:
        """Member name -> number of patterns it owns."""
        return dict(self._counts)

    @property
    def members(self) -> list[RemoteActor]:
        return list(self._members.values())

    # -- queries ----------------------------------------------------------------------------

    async def scatter(self, task: PatternMatchTask) -> ScatterResult:
        """Ask every member and merge their top-k (see the module docstring).

        Raises :class:`NoAgentAvailable` when no matcher is connected for
        ``agent_wait`` seconds, the matchers' :class:`ActorFailed` (after one
        retry) for a task they cannot handle, and :class:`TaskUndeliverable`
        when ``max_attempts`` rounds failed.
        """
        cfg = self._config
        dispatcher = self._dispatcher
        rounds = 0
        failed_once = False
        last_error: BaseException | None = None
        encoded: tuple[str, bytes] | None
        try:
            encoded = encode_payload(task)  # once for every member and round
        except (TypeError, ValueError):
            encoded = None  # each forward fails to send, and says why
        task_id = dispatcher.new_task_id()
        while True:
            if not self._settled.is_set():  # (waiting on a set event is a schedule point)
                await self._settled.wait()
            members = self.members
            if not members:
                with trio.move_on_after(cfg.agent_wait):
                    while not self._members:
                        await self._changed.wait()
                if not self._members:
                    raise NoAgentAvailable("pattern_matcher", cfg.agent_wait)
                continue
            epoch = self._epoch
            if not await dispatcher.acquire_all(members):
                # A member stopped taking tasks (draining, gone): its shard is
                # about to move.  Wait for that rather than spin.
                with trio.move_on_after(cfg.task_timeout):
                    await self._changed.wait()
                continue
            rounds += 1
            if rounds > 1:
                dispatcher.stats.resent += 1
            gather = _Round(len(members), dispatcher.stats)
            try:
                # Every member's forward starts in the same scheduling round,
                # their datagrams back to back.
                with transmit_together():
                    for link in members:
                        dispatcher.dispatch(link, task, cfg.task_timeout, gather.on_settled,
                                            encoded=encoded)
                await gather.complete.wait()
            finally:
                gather.closed = True
            answers = gather.answers
            error = gather.error
            if error is None and epoch == self._epoch:
                gather.answered = True
                return self._merge(task, members, answers)
            if isinstance(error, ActorFailed):
                if failed_once or rounds >= cfg.max_attempts:
                    raise error.copy()
                failed_once = True
            elif error is not None:
                last_error = error
                if rounds >= cfg.max_attempts:
                    raise TaskUndeliverable(task_id, "pattern_matcher", rounds, last_error)
                # A member failed to answer: wait (a while) for its departure.
                with trio.move_on_after(cfg.task_timeout):
                    while self._epoch == epoch:
                        await self._changed.wait()

    def _merge(self, task: PatternMatchTask, members: list[RemoteActor],
               answers: dict[str, PatternMatchResult]) -> ScatterResult:
        results = [answers[link.name] for link in members]
        k = int(task.params.get("k", results[0].market_context.get("k", 10)))
        merged = merge_pattern_results(results, k, task.params or None)
        by_name = {link.name: link.agent_id for link in members}
        contributors = list(dict.fromkeys(
            by_name[self._owner[m.pattern_id]] for m in merged.matches
            if self._owner.get(m.pattern_id) in by_name))
        if not contributors:
            contributors = [link.agent_id for link in members]
        return ScatterResult(merged, contributors)


def _stored_dim(path: str) -> int | None:
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM midswarm_meta WHERE key = 'dim'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else int(row[0])
