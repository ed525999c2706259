"""The supervisor's decisions, as data and pure functions.

Rules
-----
A supervisor owns an ordered list of children (start order).  When one of them
exits on its own, the supervisor decides, from three things only, what happens:

* its **strategy** -- ``one_for_one``, ``one_for_all`` or ``rest_for_one``;
* the exiting child's **restart type** -- ``permanent``, ``transient`` or
  ``temporary``;
* the **exit kind** -- ``"normal"`` (the actor called :meth:`Actor.stop`) or
  ``"failure"`` (an exception escaped ``on_start``, ``handle`` or ``on_stop``,
  or a nested supervisor gave up).

Exits the supervisor caused itself (it stopped the child) are not decisions at
all and never come here.

1. :data:`RESTART_AFTER` says whether the exiting child comes back.  If not, it
   is removed -- its mailbox closes -- and nobody else is touched, whatever the
   strategy.
2. If it comes back, the strategy picks the *scope*: the child alone
   (``one_for_one``), every child (``one_for_all``), or the child and every
   child started after it (``rest_for_one``).
3. Siblings in the scope that are running are stopped, last-started first.
   Temporary siblings stopped this way are removed, not restarted (they never
   come back, not even as collateral); every other child in the scope, and any
   sibling in the scope already waiting for its own restart, joins one restart
   group.
4. Before the group starts again the supervisor applies **restart intensity**:
   this restart plus those recorded in the last ``within`` seconds may number at
   most ``max_restarts``.  One more and the supervisor stops all its children
   (reverse start order) and fails to its parent.  A group restart counts once.
5. The group starts again, in start order, after the **backoff** delay of the
   child that exited (its ``n``-th consecutive restart; see :class:`Backoff`).

Theory of operation
-------------------
These functions are pure: they take plain values and return plain values, and
the runtime (:mod:`._supervisor`) does what they say.  The runtime is the only
caller; the property test of the supervisor keeps its own, independent model of
the same rules so that a mistake here shows up as a disagreement there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Literal

import attrs

__all__ = ["ExitKind", "RESTART_AFTER", "Plan", "plan_exit", "RestartHistory"]

ExitKind = Literal["normal", "failure"]

#: (restart type, exit kind) -> does the child come back?
RESTART_AFTER: dict[tuple[str, str], bool] = {
    #  restart type    exit kind     comes back
    ("permanent", "normal"): True,
    ("permanent", "failure"): True,
    ("transient", "normal"): False,
    ("transient", "failure"): True,
    ("temporary", "normal"): False,
    ("temporary", "failure"): False,
}


def _scope(strategy: str, n: int, index: int) -> range:
    if strategy == "one_for_one":
        return range(index, index + 1)
    if strategy == "one_for_all":
        return range(n)
    if strategy == "rest_for_one":
        return range(index, n)
    raise ValueError(f"unknown strategy {strategy!r}")


@attrs.frozen
class Plan:
    """What to do about one exit.  Indices refer to the children list.

    ``restart``: whether a restart happens at all (and so counts for intensity).
    ``stop``: running siblings to stop, in stop order (reverse start order).
    ``remove``: children dropped for good.
    ``start``: children to start again after the backoff, in start order.
    """

    restart: bool
    stop: tuple[int, ...] = ()
    remove: tuple[int, ...] = ()
    start: tuple[int, ...] = ()


def plan_exit(strategy: str, restart_types: Sequence[str], running: Sequence[bool],
              index: int, exit_kind: ExitKind) -> Plan:
    """Decide what follows the exit of child ``index``.

    ``restart_types[j]`` and ``running[j]`` describe child ``j`` (``running``
    is false for a child already waiting for a restart; the exiting child's own
    entry is ignored).
    """
    if not RESTART_AFTER[(restart_types[index], exit_kind)]:
        return Plan(restart=False, remove=(index,))
    stop: list[int] = []
    remove: list[int] = []
    start: list[int] = []
    for j in _scope(strategy, len(restart_types), index):
        if j != index and running[j]:
            stop.append(j)
        if j != index and restart_types[j] == "temporary":
            remove.append(j)
        else:
            start.append(j)
    return Plan(restart=True, stop=tuple(reversed(stop)), remove=tuple(remove),
                start=tuple(start))


class RestartHistory:
    """Restart times inside the intensity window, for rule 4.

    Holds at most ``max_restarts`` times (one more restart than that escalates,
    so older ones can never matter), and drops times as they leave the window
    ``(now - within, now]``: each check is O(1) amortised.
    """

    def __init__(self, max_restarts: int, within: float) -> None:
        self.max_restarts = max_restarts
        self.within = within
        self._times: deque[float] = deque()

    def __len__(self) -> int:
        return len(self._times)

    def _prune(self, now: float) -> None:
        times = self._times
        while times and times[0] <= now - self.within:
            times.popleft()

    def exceeded_by_one_more(self, now: float) -> bool:
        """Would one more restart at ``now`` exceed ``max_restarts`` within ``within``?"""
        self._prune(now)
        return len(self._times) + 1 > self.max_restarts

    def record(self, now: float) -> None:
        """Count a restart at ``now`` (after :meth:`exceeded_by_one_more` said no)."""
        self._prune(now)
        self._times.append(now)
