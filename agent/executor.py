"""The frozen executor: the model that answers a planner's subproblems and runs a workflow's operators, never
trained. Both envs (`--env planner`, `--env workflow`) talk to it through `Executor` only, so where it runs (the
base model served by our own backend with the adapter off, or any OpenAI-compatible server given by
`--executor-url`/`--executor-model`) is decided once at start-up.

Interface contract (implementations live beside it; tests may stand in a fake to inject faults):
- `await executor.complete(messages, max_tokens=..., temperature=...) -> ExecutorReply`
- a failed call (timeout, HTTP error, garbage) raises `ExecutorError` with a one-line reason; the rollout records
  it (a penalty or a failed rollout), the run goes on.
- every reply carries its token counts, which the rollout adds to its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class ExecutorError(RuntimeError):
    """An executor call failed; the message is one line saying why."""


@dataclass(frozen=True)
class ExecutorReply:
    text: str
    prompt_tokens: int
    completion_tokens: int


class Executor(Protocol):
    async def complete(self, messages: list[dict[str, Any]], *, max_tokens: int,
                       temperature: float = 0.0) -> ExecutorReply: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ExecutorOptions:
    """The frozen executor, shared by the envs that use one.

    A mixin of an env's options dataclass (envs/options.py makes each field a flag); envs that share it share its
    flags, which train.py adds once."""

    executor_url: str | None = field(default=None, metadata={
        "metavar": "URL",
        "help": "an OpenAI-compatible server for the frozen executor (default: the run's own endpoint asked for the "
                "base model by name: the CPU backend serves it with the adapter off, vLLM as its base model)"})
    executor_model: str | None = field(default=None, metadata={
        "metavar": "NAME", "help": "the executor's model name on --executor-url (default: the base model's own name)"})
    executor_timeout: float = field(default=120.0, metadata={"help": "seconds per executor call"})
    executor_max_tokens: int = field(default=128, metadata={"help": "tokens per executor answer"})

    def executor_problem(self) -> str | None:
        """One line naming the flag for a bad executor setting, else None."""
        if self.executor_max_tokens < 1:
            return f"--executor-max-tokens must be at least 1, got {self.executor_max_tokens}"
        return executor_flag_problem(self.executor_url, self.executor_model, self.executor_timeout)


def executor_flag_problem(url: str | None, model: str | None, timeout_s: float) -> str | None:
    """One line naming the flag for a bad executor setting, else None."""
    if url and not url.startswith(("http://", "https://")):
        return f"--executor-url must be an http(s) URL, got {url!r}"
    if url and not model:
        return "--executor-url needs --executor-model NAME (the model that server serves)"
    if model and not url:
        return "--executor-model needs --executor-url (the default executor is the base model, by its own name)"
    if timeout_s <= 0:
        return f"--executor-timeout must be above 0, got {timeout_s}"
    return None
