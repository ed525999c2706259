"""Supervised Trio actors whose mailboxes can be bound to message streams.

Usable on its own inside any Trio program::

    async with open_supervisor(strategy="one_for_one", max_restarts=3, within=5.0) as sup:
        ref = await sup.start_child(ChildSpec(Matcher, name="matcher"))
        await ref.tell(msg)
        reply = await ref.ask(query, timeout=1.0)
"""

from ._actor import Actor, ActorRef
from ._errors import (
    ActorError,
    ActorFailed,
    ActorStopped,
    ActorUnreachable,
    AskTimeout,
    RestartIntensityExceeded,
)
from ._rules import RESTART_AFTER, Plan, plan_exit
from ._spec import Backoff, ChildSpec, ChildStatus, SupervisionEvent, SupervisorSpec
from ._supervisor import Supervisor, open_supervisor

__all__ = [
    "Actor",
    "ActorError",
    "ActorFailed",
    "ActorRef",
    "ActorStopped",
    "ActorUnreachable",
    "AskTimeout",
    "Backoff",
    "ChildSpec",
    "ChildStatus",
    "Plan",
    "RESTART_AFTER",
    "RestartIntensityExceeded",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorSpec",
    "open_supervisor",
    "plan_exit",
]

# Public names report this package as their home (in reprs and in the
# exc_type of boxed failures), not the private module they live in.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(__name__ + "."):
        _obj.__module__ = __name__
del _name, _obj
