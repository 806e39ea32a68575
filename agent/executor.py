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

from dataclasses import dataclass
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
