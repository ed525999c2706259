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
from ._remote import RemoteActorRef, remote_ref
from ._serve import serve_actor
from ._spec import Backoff, ChildSpec, ChildStatus, SupervisionEvent, SupervisorSpec
from ._supervisor import Supervisor, open_supervisor
from ._wire import ActorReply, ActorRequest, BoxedError, encode_payload

__all__ = [
    "Actor",
    "ActorReply",
    "ActorRequest",
    "ActorError",
    "ActorFailed",
    "ActorRef",
    "ActorStopped",
    "ActorUnreachable",
    "AskTimeout",
    "Backoff",
    "BoxedError",
    "ChildSpec",
    "ChildStatus",
    "RemoteActorRef",
    "RestartIntensityExceeded",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorSpec",
    "encode_payload",
    "open_supervisor",
    "remote_ref",
    "serve_actor",
]

# Errors report this package as their home (in reprs and in the exc_type of
# boxed failures), not the private module they live in.  Only exceptions:
# attrs classes resolve their string annotations through __module__.
for _obj in (ActorError, ActorFailed, ActorStopped, ActorUnreachable, AskTimeout,
             RestartIntensityExceeded):
    _obj.__module__ = __name__
del _obj
