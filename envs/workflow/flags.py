"""The workflow env's own flags (registered in `rollouts.registry.ENV_FLAGS`) and the options they make.

Light to import: every `train.py` run declares these flags, whatever its env. The frozen executor's flags
(`--executor-url`, `--executor-model`, `--executor-timeout`, `--executor-max-tokens`) are shared with
`--env planner`: the registry adds a flag both envs declare once.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from agent.executor import add_executor_flags, executor_flag_problem
from envs.workflow.data import DOMAINS

DEFAULT_RATIOS = "math=0.4,qa=0.3,code=0.3"


@dataclass(frozen=True)
class WorkflowOptions:
    domain_ratios: str = DEFAULT_RATIOS
    workflow_time_limit: float = 60.0
    max_executor_calls: int = 8
    executor_url: str | None = None  # None: the run's own endpoint, base model, adapter off
    executor_model: str | None = None
    executor_timeout: float = 120.0
    executor_max_tokens: int = 128

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> WorkflowOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names and v is not None})

    def ratios(self) -> dict[str, float]:
        return parse_ratios(self.domain_ratios)


def parse_ratios(text: str) -> dict[str, float]:
    """'math=0.4,qa=0.3,code=0.3' -> {domain: weight}; ValueError naming --domain-ratios otherwise. Weights are
    relative (they need not sum to 1); a domain left out gets 0."""
    ratios: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in DOMAINS:
            raise ValueError(f"--domain-ratios: {item!r} is not DOMAIN=WEIGHT with DOMAIN one of {', '.join(DOMAINS)}")
        if name in ratios:
            raise ValueError(f"--domain-ratios: {name} is given twice")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"--domain-ratios: {name}={value!r} is not a number") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"--domain-ratios: {name}={value} must be a finite number >= 0")
        ratios[name] = weight
    if sum(ratios.values()) <= 0:
        raise ValueError("--domain-ratios: at least one domain needs a weight above 0")
    return ratios


def _executor_flags(group: Any) -> None:
    add_executor_flags(group)
    group.add_argument("--executor-max-tokens", type=int, default=WorkflowOptions.executor_max_tokens,
                       help="tokens per executor answer")


def add_flags(group: argparse._ArgumentGroup) -> None:
    d = WorkflowOptions()
    a = group.add_argument
    a("--domain-ratios", default=d.domain_ratios, metavar="D=W,...",
      help="workflow tasks by domain, e.g. math=0.4,qa=0.3,code=0.3 (relative weights)")
    a("--workflow-time-limit", type=float, default=d.workflow_time_limit,
      help="seconds a workflow may run in the sandbox, executor calls included")
    a("--max-executor-calls", type=int, default=d.max_executor_calls,
      help="executor calls one workflow may make; one more stops it (score 0)")
    _executor_flags(group)


def validate(options: dict[str, Any]) -> None:
    """One line naming the flag for a bad value, before any work."""
    opts = WorkflowOptions.from_options(options)
    opts.ratios()
    for flag, number, low in (("--max-executor-calls", opts.max_executor_calls, 1),
                              ("--executor-max-tokens", opts.executor_max_tokens, 1)):
        if number < low:
            raise ValueError(f"{flag} must be at least {low}, got {number}")
    if not opts.workflow_time_limit > 0:
        raise ValueError(f"--workflow-time-limit must be above 0, got {opts.workflow_time_limit}")
    if problem := executor_flag_problem(opts.executor_url, opts.executor_model, opts.executor_timeout):
        raise ValueError(problem)
