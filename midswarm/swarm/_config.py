"""The swarm's settings, and reading them from a TOML file.

A config file has up to three tables, all optional::

    [coordinator]              # how the coordinator runs (CoordinatorConfig)
    host = "127.0.0.1"
    port = 7400
    certs = "certs"            # ca.pem, coordinator.pem/.key (midswarm certs DIR)
    store_dir = "swarm-data"   # pattern library and reasoning bank live here
    credit = 4                 # tasks in flight per remote actor
    task_timeout = 30.0        # seconds before a task is re-sent to another agent
    max_attempts = 3

    [agents]                   # the composition open_swarm / midswarm demo start
    pattern_matcher = 2
    reasoning_bank = 1

    [parameters.pattern_matcher]   # initial parameters of each agent type's actor
    k = 10
    similarity_threshold = 0.8

Unknown tables or keys, wrong types and out-of-range numbers raise
:class:`ConfigError` naming the file and the key, so a typo never goes unnoticed.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs

from ._protocol import AGENT_TYPES

__all__ = ["ConfigError", "CoordinatorConfig", "SwarmConfig", "load_config"]


class ConfigError(ValueError):
    """A config file or value is malformed; the message names the key."""


def _positive_number(name: str) -> Any:
    def check(_inst: object, _attr: object, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return check


def _positive_int(name: str) -> Any:
    def check(_inst: object, _attr: object, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return check


@attrs.frozen(kw_only=True)
class CoordinatorConfig:
    """How the coordinator delivers tasks and watches agents.

    ``credit``
        tasks in flight at once per remote actor; a submit waits for a free
        credit (backpressure) instead of queueing without bound.
    ``task_timeout``
        seconds an attempt may take before the task is also sent to another
        agent of its type.  The first attempt keeps running: whichever answer
        arrives first is the result, later ones are discarded as duplicates.
    ``max_attempts``
        sends of one task (first send and re-sends) before the caller gets
        :class:`TaskUndeliverable`.
    ``agent_wait``
        seconds a submit waits for an agent of the task's type to exist at
        all before raising :class:`NoAgentAvailable`.
    ``heartbeat_interval`` / ``heartbeat_timeout``
        both sides send a heartbeat every interval; a connection silent for
        the timeout is dropped (its tasks are re-sent elsewhere).
    ``hello_timeout``
        seconds a new connection has to say hello and bind its actor streams.
    ``drain_timeout``
        seconds a graceful shutdown waits for tasks in flight to finish.
    ``clients``
        the ids that may connect as clients (:func:`connect_coordinator`) to
        submit work; ``None`` (the default) lets in any client whose hello
        passes the usual checks.  Agents are not affected.
    """

    coordinator_id: str = "coordinator"
    credit: int = attrs.field(default=4, validator=_positive_int("credit"))
    task_timeout: float = attrs.field(default=30.0, validator=_positive_number("task_timeout"))
    max_attempts: int = attrs.field(default=3, validator=_positive_int("max_attempts"))
    agent_wait: float = attrs.field(default=30.0, validator=_positive_number("agent_wait"))
    heartbeat_interval: float = attrs.field(default=1.0, validator=_positive_number(
        "heartbeat_interval"))
    heartbeat_timeout: float = attrs.field(default=5.0, validator=_positive_number(
        "heartbeat_timeout"))
    hello_timeout: float = attrs.field(default=10.0, validator=_positive_number(
        "hello_timeout"))
    drain_timeout: float = attrs.field(default=10.0, validator=_positive_number(
        "drain_timeout"))
    clients: tuple[str, ...] | None = attrs.field(
        default=None, converter=lambda v: v if v is None or isinstance(v, str) else tuple(v))

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.coordinator_id, str) or not self.coordinator_id:
            raise ConfigError(f"coordinator_id must be a non-empty string, got "
                              f"{self.coordinator_id!r}")
        if self.clients is not None and (
                isinstance(self.clients, str)
                or not all(isinstance(c, str) and c for c in self.clients)):
            raise ConfigError(f"clients must be a list of non-empty id strings, got "
                              f"{self.clients!r}")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError(f"heartbeat_timeout ({self.heartbeat_timeout}) must be longer "
                              f"than heartbeat_interval ({self.heartbeat_interval})")


def check_composition(agents: Mapping[str, Any], name: str = "agents") -> dict[str, int]:
    """Validate an ``{agent_type: count}`` mapping; returns it as a plain dict."""
    if not isinstance(agents, Mapping):
        raise ConfigError(f"{name} must be a mapping of agent type -> count")
    out: dict[str, int] = {}
    for agent_type, count in agents.items():
        if agent_type not in AGENT_TYPES:
            raise ConfigError(f"{name}: unknown agent type {agent_type!r} "
                              f"(known: {', '.join(AGENT_TYPES)})")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"{name}[{agent_type!r}] must be an int >= 0, got {count!r}")
        out[agent_type] = count
    return out


def check_parameters(parameters: Mapping[str, Any], name: str = "parameters"
                     ) -> dict[str, dict[str, Any]]:
    """Validate ``{agent_type: {name: value}}``; the values are the actors' business."""
    if not isinstance(parameters, Mapping):
        raise ConfigError(f"{name} must be a mapping of agent type -> table")
    out: dict[str, dict[str, Any]] = {}
    for agent_type, table in parameters.items():
        if agent_type not in AGENT_TYPES:
            raise ConfigError(f"{name}: unknown agent type {agent_type!r} "
                              f"(known: {', '.join(AGENT_TYPES)})")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{name}.{agent_type} must be a table, got {table!r}")
        out[agent_type] = dict(table)
    return out


DEFAULT_COMPOSITION: dict[str, int] = {
    "pattern_matcher": 2, "correlator": 1, "feature_engineer": 1, "neural_trainer": 2,
    "reasoning_bank": 1,
}


@attrs.frozen(kw_only=True)
class SwarmConfig:
    """Everything a config file can say (see the module docstring)."""

    host: str = "127.0.0.1"
    port: int = 7400
    certs: str | None = None
    store_dir: str | None = None
    coordinator: CoordinatorConfig = attrs.Factory(CoordinatorConfig)
    agents: dict[str, int] = attrs.Factory(lambda: dict(DEFAULT_COMPOSITION))
    parameters: dict[str, dict[str, Any]] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) \
                or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an int in 0..65535, got {self.port!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be a non-empty string, got {self.host!r}")
        check_composition(self.agents)
        check_parameters(self.parameters)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> SwarmConfig:
        """Build from parsed TOML; raises :class:`ConfigError` naming ``source`` and key."""
        try:
            return cls._from_dict(data, source)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], source: str) -> SwarmConfig:
        unknown = set(data) - {"coordinator", "agents", "parameters"}
        if unknown:
            raise ConfigError(f"unknown table(s) {', '.join(sorted(unknown))} "
                              f"(known: coordinator, agents, parameters)")
        coord = dict(data.get("coordinator", {}))
        if not isinstance(data.get("coordinator", {}), Mapping):
            raise ConfigError("[coordinator] must be a table")
        top: dict[str, Any] = {}
        for key in ("host", "port", "certs", "store_dir"):
            if key in coord:
                top[key] = coord.pop(key)
        for key in ("certs", "store_dir"):
            if key in top and not isinstance(top[key], str):
                raise ConfigError(f"coordinator.{key} must be a path string, got {top[key]!r}")
        fields = {f.name for f in attrs.fields(CoordinatorConfig)}
        bad = set(coord) - fields
        if bad:
            raise ConfigError(f"unknown key(s) in [coordinator]: {', '.join(sorted(bad))} "
                              f"(known: host, port, certs, store_dir, "
                              f"{', '.join(sorted(fields))})")
        try:
            coordinator = CoordinatorConfig(**coord)
        except ConfigError as exc:
            raise ConfigError(f"coordinator.{exc}") from None
        agents = check_composition(data.get("agents", DEFAULT_COMPOSITION), "[agents]")
        parameters = check_parameters(data.get("parameters", {}), "[parameters]")
        return cls(coordinator=coordinator, agents=agents, parameters=parameters, **top)


def load_config(path: str | os.PathLike[str]) -> SwarmConfig:
    """Read a TOML config file.  Relative ``certs``/``store_dir`` are resolved
    against the file's directory.

    Raises :class:`FileNotFoundError` and :class:`ConfigError` (bad TOML, unknown
    or malformed keys; the message names the file).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = SwarmConfig.from_dict(data, path)
    base = os.path.dirname(os.path.abspath(path))
    changes: dict[str, Any] = {key: os.path.join(base, value) for key in ("certs", "store_dir")
               if (value := getattr(config, key)) is not None and not os.path.isabs(value)}
    return attrs.evolve(config, **changes) if changes else config
