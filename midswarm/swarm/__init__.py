"""The swarm: a coordinator, agents over QUIC, the learning loop.

Embedded in one Trio program::

    async with open_swarm({"pattern_matcher": 2, "reasoning_bank": 1}) as swarm:
        await swarm.add_patterns(vectors, outcomes)
        result = await swarm.submit(PatternMatchTask(window))
        verdicts = await swarm.report_outcome(result, actual)

Across processes and hosts: :func:`open_coordinator` (or ``midswarm
coordinator``) with a :class:`~midswarm.transport.ServerTLS` on one side,
:func:`run_agent` (or ``midswarm agent``) on the others, and programs that
submit work as its clients through :func:`connect_coordinator`.
"""

from ._agent_bank import default_bank_path
from ._agent_host import run_agent
from ._agent_matcher import (
    MATCHER_DEFAULTS,
    MATCHER_LIMITS,
    check_matcher_parameters,
    merge_pattern_results,
    similarity_of,
    summarise,
)
from ._agents import (
    AGENT_FACTORIES,
    FeatureEngineer,
    NeuralTrainer,
    PatternMatcher,
    ReasoningBankActor,
    StrategyCorrelator,
    rank_correlation,
)
from ._client import RemoteCoordinator, connect_coordinator
from ._client_protocol import StatusReport
from ._config import ConfigError, CoordinatorConfig, SwarmConfig, load_config
from ._coordinator import AgentInfo, Coordinator, CoordinatorStats, open_coordinator
from ._demo import DemoOptions, run_demo
from ._demo_stats import DemoSummary
from ._embed import Swarm, open_swarm
from ._errors import (
    AgentRefused,
    ClientRefused,
    CoordinatorClosed,
    NoAgentAvailable,
    RemoteError,
    SwarmError,
    TaskTimeout,
    TaskUndeliverable,
)
from ._market import (
    MOTIFS,
    REGIMES,
    BadRow,
    MarketData,
    MarketDataError,
    MotifEvent,
    load_csv,
    synthetic_market,
)
from ._protocol import (
    AGENT_TYPES,
    CONTROL_TRANSITIONS,
    TASK_AGENT_TYPES,
    Ack,
    ActorRestarted,
    AdaptationCommand,
    AgentHello,
    CorrelationTask,
    Drain,
    ExperienceBatch,
    FeatureBlock,
    FeatureTask,
    Gradients,
    Heartbeat,
    Match,
    ParameterChange,
    PatternLibraryAdd,
    PatternMatchResult,
    PatternMatchTask,
    Refused,
    StrategyCorrelation,
    StreamBind,
    TaskFailed,
    TrainStep,
    Verdicts,
    Welcome,
    next_control_state,
)
from ._training import ParameterServer, Scatter, StaleGradientsError

__all__ = [
    "AGENT_FACTORIES",
    "AGENT_TYPES",
    "CONTROL_TRANSITIONS",
    "MATCHER_DEFAULTS",
    "MATCHER_LIMITS",
    "MOTIFS",
    "REGIMES",
    "TASK_AGENT_TYPES",
    "Ack",
    "ActorRestarted",
    "AdaptationCommand",
    "AgentHello",
    "AgentInfo",
    "AgentRefused",
    "BadRow",
    "ClientRefused",
    "ConfigError",
    "Coordinator",
    "CoordinatorClosed",
    "CoordinatorConfig",
    "CoordinatorStats",
    "CorrelationTask",
    "DemoOptions",
    "DemoSummary",
    "Drain",
    "ExperienceBatch",
    "FeatureBlock",
    "FeatureEngineer",
    "FeatureTask",
    "Gradients",
    "Heartbeat",
    "MarketData",
    "MarketDataError",
    "Match",
    "MotifEvent",
    "NeuralTrainer",
    "NoAgentAvailable",
    "ParameterChange",
    "ParameterServer",
    "PatternLibraryAdd",
    "PatternMatchResult",
    "PatternMatchTask",
    "PatternMatcher",
    "ReasoningBankActor",
    "Refused",
    "RemoteCoordinator",
    "RemoteError",
    "Scatter",
    "StaleGradientsError",
    "StatusReport",
    "StrategyCorrelation",
    "StrategyCorrelator",
    "StreamBind",
    "Swarm",
    "SwarmConfig",
    "SwarmError",
    "TaskFailed",
    "TaskTimeout",
    "TaskUndeliverable",
    "TrainStep",
    "Verdicts",
    "Welcome",
    "check_matcher_parameters",
    "connect_coordinator",
    "default_bank_path",
    "load_config",
    "load_csv",
    "merge_pattern_results",
    "next_control_state",
    "open_coordinator",
    "open_swarm",
    "rank_correlation",
    "run_agent",
    "run_demo",
    "similarity_of",
    "summarise",
    "synthetic_market",
]
