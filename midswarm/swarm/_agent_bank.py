"""The ReasoningBank actor: judges experiences and proposes adaptations."""

from __future__ import annotations

import gc
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import trio

from ..actors import Actor
from ..reasoning import AdaptationCommand, Experience, ReasoningBank, Verdict, WriterLockedError
from ._protocol import ExperienceBatch, Verdicts

__all__ = ["ReasoningBankActor", "default_bank_path"]


def default_bank_path(agent_id: str) -> str:
    """``<tmp>/midswarm/reasoning-<agent_id>.sqlite`` (the id made file-name safe)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", agent_id) or "agent"
    return os.path.join(tempfile.gettempdir(), "midswarm", f"reasoning-{safe}.sqlite")


class ReasoningBankActor(Actor):
    """Wraps a :class:`~midswarm.reasoning.ReasoningBank` (one SQLite file).

    ``parameters["path"]`` names the file (created if missing, its directory
    too); without it the file is :func:`default_bank_path` of the agent id.
    The bank is opened in ``on_start`` and closed in ``on_stop``; what it has
    recorded survives restarts of the actor and of the process.

    Messages:

    * :class:`ExperienceBatch` -> :class:`Verdicts`: every experience is
      judged first (a malformed one raises :class:`ValueError`/:class:`TypeError`
      naming its index and field, and nothing of the batch is recorded), then
      all are recorded; ``ids`` are their ids in the bank.  ``adaptations``
      holds, for each agent id of the batch in order of first appearance,
      ``bank.suggest(agent_id)`` when it is not ``None``.
    * ``"size"`` -> the number of recorded experiences.

    The SQLite work runs in a worker thread, so the agent's event loop keeps
    serving its other streams meanwhile.
    """

    def __init__(self, agent_id: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = dict(parameters or {})
        path = params.get("path")
        if path is None:
            path = default_bank_path(agent_id)
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise TypeError(f"parameters['path'] must be a file path, got {path!r}")
        self.agent_id = agent_id
        self.path = os.fspath(path)
        self.bank: ReasoningBank | None = None

    async def on_start(self) -> None:
        self.bank = await trio.to_thread.run_sync(self._open)

    def _open(self) -> ReasoningBank:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        try:
            return ReasoningBank(self.path)
        except WriterLockedError:
            # A predecessor instance that was cancelled (so never ran on_stop)
            # may still hold the writer lock until it is garbage-collected.
            gc.collect()
            return ReasoningBank(self.path)

    async def on_stop(self) -> None:
        if self.bank is not None:
            self.bank.close()
            self.bank = None

    async def handle(self, msg: Any) -> Any:
        bank = self.bank
        assert bank is not None, "on_start opens the bank"
        if isinstance(msg, ExperienceBatch):
            return await trio.to_thread.run_sync(self._judge_batch, bank, msg)
        if msg == "size":
            return len(bank)
        raise TypeError(f"ReasoningBankActor cannot handle {type(msg).__name__} message "
                        f"{msg!r}")

    @staticmethod
    def _judge_batch(bank: ReasoningBank, batch: ExperienceBatch) -> Verdicts:
        experiences = batch.experiences
        if not isinstance(experiences, list):
            raise TypeError(f"ExperienceBatch.experiences must be a list, got "
                            f"{type(experiences).__name__}")
        verdicts: list[Verdict] = []
        for index, experience in enumerate(experiences):
            if not isinstance(experience, Experience):
                raise TypeError(f"ExperienceBatch.experiences[{index}] is a "
                                f"{type(experience).__name__}, not an Experience")
            try:
                verdicts.append(bank.judge(experience))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"ExperienceBatch.experiences[{index}]: {exc}") from None
        # judge() does not compare vector lengths with the stored ones; record()
        # does, so check them all here rather than fail half-way through.
        dim = bank.dim
        for index, experience in enumerate(experiences):
            if experience.vector is None:
                continue
            length = len(experience.vector)
            if dim and length != dim:
                raise ValueError(f"ExperienceBatch.experiences[{index}]: vector has {length} "
                                 f"values; the bank stores vectors of dimension {dim}")
            dim = length
        ids = [bank.record(experience) for experience in experiences]
        adaptations: list[AdaptationCommand] = []
        for agent_id in dict.fromkeys(e.agent_id for e in experiences):
            command = bank.suggest(agent_id)
            if command is not None:
                adaptations.append(command)
        return Verdicts(verdicts=verdicts, ids=ids, adaptations=adaptations)
