"""The planner env's options: one frozen dataclass whose fields are its train.py flags (envs/options.py makes them);
the frozen executor's flags come from `agent.executor.ExecutorOptions`, shared with --env workflow.

Light to import: every `train.py` run declares these flags, whatever its env.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.executor import ExecutorOptions


@dataclass(frozen=True)
class PlannerOptions(ExecutorOptions):
    """Word problems split into subproblems that a frozen executor solves."""

    correctness_weight: float = field(default=1.0, metadata={"help": "reward weight of a correct answer"})
    token_weight: float = field(default=0.2, metadata={
        "help": "reward weight of 1 - tokens/--token-budget (planner and executor completion tokens)"})
    # The token term's budget: a two-part plan (a short plan, 3 executor answers of up to 128 tokens) stays well
    # inside it, so it keeps most of the term; --max-tokens, the old budget, left most plans nothing.
    token_budget: int = field(default=1024, metadata={
        "help": "the token term's budget: completion tokens of a rollout, the plan's and every executor answer's"})
    independence_weight: float = field(default=0.3, metadata={
        "help": "reward weight of the subproblems' mean pairwise (1 - cosine similarity)"})
    max_subproblems: int = field(default=6, metadata={"help": "a plan with more is malformed"})
    embedding_model: str | None = field(default=None, metadata={
        "metavar": "PATH",
        "help": "a local sentence-transformers model folder for independence (default: TF-IDF cosine)"})
    # the bundled generator's train problems (held-out: a third of that, other seeds)
    num_problems: int = field(default=64, metadata={"help": "bundled generator: train problems"})

    def validate(self) -> None:
        """One line naming the flag for a bad value, before any work."""
        for flag, value in (("--correctness-weight", self.correctness_weight), ("--token-weight", self.token_weight),
                            ("--independence-weight", self.independence_weight)):
            if value < 0:
                raise ValueError(f"{flag} must be at least 0, got {value}")
        for flag, number, low in (("--token-budget", self.token_budget, 1),
                                  ("--max-subproblems", self.max_subproblems, 1),
                                  ("--num-problems", self.num_problems, 1)):
            if number < low:
                raise ValueError(f"{flag} must be at least {low}, got {number}")
        if problem := self.executor_problem():
            raise ValueError(problem)
        if self.embedding_model and not Path(self.embedding_model).is_dir():
            raise ValueError(f"--embedding-model: no model folder at {self.embedding_model}")
