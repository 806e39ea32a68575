"""The planner env's own flags (registered in `rollouts.registry.ENV_FLAGS`) and the options they make.

Light to import: every `train.py` run declares these flags, whatever its env. `PlannerOptions` is the one typed
view of the values, and its defaults are the flags' defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.executor import add_executor_flags, executor_flag_problem


@dataclass(frozen=True)
class PlannerOptions:
    correctness_weight: float = 1.0
    token_weight: float = 0.2
    independence_weight: float = 0.3
    executor_url: str | None = None  # None: the run's own endpoint, base model, adapter off
    executor_model: str | None = None  # None: the base model's own name
    executor_max_tokens: int = 128
    # The token term's budget: a two-part plan (about 60 planner tokens, 3 executor answers of up to 128) spends at
    # most ~450, so it keeps at least ~0.55 of the term; --max-tokens (256), the old budget, left most plans 0.
    token_budget: int = 1024
    executor_timeout: float = 120.0
    max_subproblems: int = 6
    embedding_model: str | None = None
    num_problems: int = 64  # the bundled generator's train problems (held-out: a quarter of that, other seeds)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> PlannerOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names and v is not None})


def add_flags(group: argparse._ArgumentGroup) -> None:
    d = PlannerOptions()
    a = group.add_argument
    a("--correctness-weight", type=float, default=d.correctness_weight, help="reward weight of a correct answer")
    a("--token-weight", type=float, default=d.token_weight,
      help="reward weight of 1 - tokens/--token-budget (planner and executor completion tokens)")
    a("--token-budget", type=int, default=d.token_budget,
      help="the token term's budget: completion tokens of a rollout, the plan's and every executor answer's")
    a("--independence-weight", type=float, default=d.independence_weight,
      help="reward weight of the subproblems' mean pairwise (1 - cosine similarity)")
    add_executor_flags(group)  # --executor-url, --executor-model, --executor-timeout: shared with --env workflow
    a("--executor-max-tokens", type=int, default=d.executor_max_tokens, help="tokens per executor answer")
    a("--max-subproblems", type=int, default=d.max_subproblems, help="a plan with more is malformed")
    a("--embedding-model", default=None, metavar="PATH",
      help="a local sentence-transformers model folder for independence (default: TF-IDF cosine)")
    a("--num-problems", type=int, default=d.num_problems, help="bundled generator: train problems")


def validate(options: dict[str, Any]) -> None:
    """One line naming the flag for a bad value, before any work."""
    opts = PlannerOptions.from_options(options)
    for flag, value in (("--correctness-weight", opts.correctness_weight), ("--token-weight", opts.token_weight),
                        ("--independence-weight", opts.independence_weight)):
        if value < 0:
            raise ValueError(f"{flag} must be at least 0, got {value}")
    for flag, number, low in (("--executor-max-tokens", opts.executor_max_tokens, 1),
                              ("--token-budget", opts.token_budget, 1),
                              ("--max-subproblems", opts.max_subproblems, 1), ("--num-problems", opts.num_problems, 1)):
        if number < low:
            raise ValueError(f"{flag} must be at least {low}, got {number}")
    if problem := executor_flag_problem(opts.executor_url, opts.executor_model, opts.executor_timeout):
        raise ValueError(problem)
    if opts.embedding_model and not Path(opts.embedding_model).is_dir():
        raise ValueError(f"--embedding-model: no model folder at {opts.embedding_model}")
