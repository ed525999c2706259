"""Plain value types of the actor runtime: child specs, backoff, events."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._errors import ActorError

if TYPE_CHECKING:
    from ._actor import Actor

__all__ = [
    "Backoff",
    "ChildSpec",
    "ChildStatus",
    "EventKind",
    "Observer",
    "RestartType",
    "Strategy",
    "SupervisionEvent",
    "SupervisorSpec",
]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType = Literal["permanent", "transient", "temporary"]
EventKind = Literal["started", "failed", "restarted", "escalated", "stopped", "message_lost"]

STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all", "rest_for_one")
RESTART_TYPES: tuple[str, ...] = ("permanent", "transient", "temporary")
DEFAULT_MAILBOX_SIZE = 64


def _check_choice(name: str, choices: tuple[str, ...]) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return check


def _check_number(name: str, *, minimum: float = 0.0, strict: bool = False,
                  allow_inf: bool = True) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number; got {type(value).__name__}")
        if math.isnan(value) or (not allow_inf and math.isinf(value)):
            raise ValueError(f"{name} must be a finite number; got {value!r}")
        if value < minimum or (strict and value == minimum):
            op = ">" if strict else ">="
            raise ValueError(f"{name} must be {op} {minimum:g}; got {value!r}")
    return check


def _check_count(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int; got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0; got {value}")
    return check


@attrs.frozen
class Backoff:
    """Exponential backoff with jitter between restarts of a child.

    The ``n``-th consecutive restart of a child waits
    ``initial * multiplier ** (n - 1)`` seconds, multiplied by a random factor
    drawn uniformly from ``[1 - jitter, 1 + jitter]`` and then capped at
    ``maximum``.  A child whose instance ran for at least ``reset_after``
    seconds before exiting starts counting from ``n = 1`` again (the quiet
    period).  ``Backoff(initial=0)`` restarts at once.
    """

    initial: float = attrs.field(default=0.05, validator=_check_number("Backoff.initial",
                                                                         allow_inf=False))
    maximum: float = attrs.field(default=5.0, validator=_check_number("Backoff.maximum"))
    multiplier: float = attrs.field(default=2.0, validator=_check_number(
        "Backoff.multiplier", minimum=1.0, allow_inf=False))
    jitter: float = attrs.field(default=0.2, validator=_check_number("Backoff.jitter",
                                                                       allow_inf=False))
    reset_after: float = attrs.field(default=10.0, validator=_check_number(
        "Backoff.reset_after", strict=True))

    def __attrs_post_init__(self) -> None:
        if self.maximum < self.initial:
            raise ValueError(f"Backoff.maximum ({self.maximum!r}) must be >= Backoff.initial "
                             f"({self.initial!r})")
        if self.jitter > 1:
            raise ValueError(f"Backoff.jitter must be between 0 and 1; got {self.jitter!r}")

    def delay(self, attempt: int, u: float = 0.5) -> float:
        """Seconds to wait before consecutive restart number ``attempt`` (>= 1).

        ``u`` in ``[0, 1)`` picks the jitter factor (``0.5`` means none); the
        supervisor passes a fresh :func:`random.random` value.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1; got {attempt}")
        if self.initial == 0:
            return 0.0
        try:
            raw = self.initial * self.multiplier ** (attempt - 1)
        except OverflowError:
            raw = math.inf
        return min(self.maximum, min(raw, self.maximum) * (1 + self.jitter * (2 * u - 1)))


def _default_name(spec: ChildSpec) -> str:
    return getattr(spec.factory, "__name__", None) or type(spec.factory).__name__


def _check_factory(_inst: Any, _attr: Any, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"ChildSpec factory must be callable (an Actor subclass or a function "
                        f"returning an Actor); got {value!r}")


def _check_name(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"name must be a non-empty string; got {value!r}")


@attrs.frozen
class ChildSpec:
    """How a supervisor starts, restarts and stops one actor.

    ``factory``
        a zero-argument callable returning a fresh :class:`Actor` (an ``Actor``
        subclass works); called again for every restart, so state is rebuilt.
    ``name``
        unique among the supervisor's children; defaults to the factory's name.
    ``restart``
        ``"permanent"`` (always restarted), ``"transient"`` (restarted only after
        a failure) or ``"temporary"`` (never restarted).
    ``shutdown``
        seconds the actor gets, when asked to stop, to finish its current
        message and run ``on_stop``; then it is cancelled.
    ``mailbox_size``
        how many messages may wait in the mailbox; ``tell``/``ask`` wait while it
        is full.  ``0`` makes every send wait for the actor to take the message.
    """

    factory: Callable[[], Actor] = attrs.field(validator=_check_factory)
    name: str = attrs.field(default=attrs.Factory(_default_name, takes_self=True),
                            validator=_check_name)
    restart: RestartType = attrs.field(default="permanent",
                                       validator=_check_choice("restart", RESTART_TYPES))
    shutdown: float = attrs.field(default=5.0, validator=_check_number("shutdown"))
    mailbox_size: int = attrs.field(default=DEFAULT_MAILBOX_SIZE,
                                    validator=_check_count("mailbox_size"))


Observer = Callable[["SupervisionEvent"], None]


def _to_children(children: Iterable[ChildSpec | SupervisorSpec]
                 ) -> tuple[ChildSpec | SupervisorSpec, ...]:
    return tuple(children)


@attrs.frozen
class SupervisorSpec:
    """A nested supervisor as a child of another supervisor.

    ``children`` are started in order whenever the nested supervisor starts or
    is restarted.  It escalates to its parent exactly like a failing actor, and
    its parent applies its own strategy.  ``observer=None`` uses the parent's
    observer.  ``shutdown`` (default: no limit) bounds how long its parent waits
    for it to stop its own children.
    """

    name: str = attrs.field(validator=_check_name)
    children: tuple[ChildSpec | SupervisorSpec, ...] = attrs.field(default=(),
                                                                  converter=_to_children)
    strategy: Strategy = attrs.field(default="one_for_one",
                                     validator=_check_choice("strategy", STRATEGIES))
    max_restarts: int = attrs.field(default=3, validator=_check_count("max_restarts"))
    within: float = attrs.field(default=5.0, validator=_check_number("within", strict=True))
    backoff: Backoff | None = attrs.field(factory=Backoff)
    restart: RestartType = attrs.field(default="permanent",
                                       validator=_check_choice("restart", RESTART_TYPES))
    shutdown: float = attrs.field(default=math.inf, validator=_check_number("shutdown"))
    observer: Observer | None = None

    def __attrs_post_init__(self) -> None:
        names: set[str] = set()
        for child in self.children:
            if not isinstance(child, (ChildSpec, SupervisorSpec)):
                raise TypeError(f"children must be ChildSpec or SupervisorSpec; got {child!r}")
            if child.name in names:
                raise ValueError(f"two children of {self.name!r} are named {child.name!r}")
            names.add(child.name)
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or None; got {self.backoff!r}")


@attrs.frozen
class SupervisionEvent:
    """What the observer hook receives.

    ``kind``
        ``"started"`` (a child started for the first time), ``"failed"`` (an
        instance raised), ``"restarted"`` (an instance replaced a previous one),
        ``"escalated"`` (the supervisor exceeded its restart intensity and gave
        up), ``"stopped"`` (an instance ended without failing: stopped by its
        supervisor or finished on its own), ``"message_lost"`` (a ``tell``
        message was accepted by the mailbox but will never be handled).
    ``child`` / ``supervisor``
        names; for ``"escalated"`` ``child`` is the child whose exit tipped it.
    ``exception``
        the :class:`ActorFailed` for ``"failed"``; the
        :class:`RestartIntensityExceeded` for ``"escalated"``; for
        ``"message_lost"`` the error that lost it (:class:`ActorFailed` when the
        actor crashed while handling it, :class:`ActorStopped` otherwise).
    ``restart_count``
        how many times this child has been restarted so far.
    ``delay``
        for ``"restarted"``: the backoff delay waited before the restart.
    ``time``
        :func:`trio.current_time` when it happened.
    ``message``
        for ``"message_lost"``: the message.
    """

    kind: EventKind
    child: str
    supervisor: str
    exception: ActorError | None = None
    restart_count: int = 0
    delay: float | None = None
    time: float = 0.0
    message: Any = None


@attrs.frozen
class ChildStatus:
    """One row of :meth:`Supervisor.children`.

    ``state`` is ``"running"`` or ``"restarting"`` (waiting out its backoff, or
    stopped together with a sibling and about to start again).
    """

    name: str
    kind: Literal["actor", "supervisor"]
    state: Literal["running", "restarting"]
    restarts: int
