"""The workflow env's options: one frozen dataclass whose fields are its train.py flags (envs/options.py makes
them); the frozen executor's flags come from `agent.executor.ExecutorOptions`, shared with --env planner.

Light to import: every `train.py` run declares these flags, whatever its env.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.executor import ExecutorOptions

DOMAINS = ("math", "qa", "code")  # the task domains a workflow run draws from

DEFAULT_RATIOS = "math=0.4,qa=0.3,code=0.3"


@dataclass(frozen=True)
class WorkflowOptions(ExecutorOptions):
    """Python workflows over executor operators, run in the sandbox."""

    domain_ratios: str = field(default=DEFAULT_RATIOS, metadata={
        "metavar": "D=W,...", "help": "workflow tasks by domain, e.g. math=0.4,qa=0.3,code=0.3 (relative weights)"})
    workflow_time_limit: float = field(default=60.0, metadata={
        "help": "seconds a workflow may run in the sandbox, executor calls included"})
    max_executor_calls: int = field(default=8, metadata={
        "help": "executor calls one workflow may make; one more stops it (score 0)"})

    def ratios(self) -> dict[str, float]:
        return parse_ratios(self.domain_ratios)

    def validate(self) -> None:
        """One line naming the flag for a bad value, before any work."""
        self.ratios()
        if self.max_executor_calls < 1:
            raise ValueError(f"--max-executor-calls must be at least 1, got {self.max_executor_calls}")
        if not self.workflow_time_limit > 0:
            raise ValueError(f"--workflow-time-limit must be above 0, got {self.workflow_time_limit}")
        if problem := self.executor_problem():
            raise ValueError(problem)


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
