"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import Clock

from midswarm.reasoning import ReasoningBank
from midswarm.transport import make_dev_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development CA with a coordinator certificate (``localhost``, 127.0.0.1, ::1)
    and agent certificates ``a1`` and ``a2``: ``ca.pem``, ``coordinator.pem/.key``,
    ``a1.pem/.key``, ``a2.pem/.key``."""
    return make_dev_certs(tmp_path_factory.mktemp("certs"), agents=["a1", "a2"])


@pytest.fixture
def clock() -> Clock:
    """A settable clock starting at ``_helpers.T0``."""
    return Clock()


@pytest.fixture
def bank(tmp_path: Path, clock: Clock) -> Iterator[ReasoningBank]:
    """A fresh ReasoningBank file on ``clock``, closed after the test."""
    b = ReasoningBank(tmp_path / "bank.db", clock=clock)
    yield b
    b.close()
