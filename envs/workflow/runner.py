"""Runs a model-written workflow in the sandbox and answers its operators' executor calls (trainer side).

The workflow process (`sandbox_main.py`) has no network: each operator call arrives as one JSON line on its
stdout, the executor is called here (concurrently within a batch, every call counted with its tokens) and the
replies go back as one line on its stdin. Everything the workflow can do wrong ends as a `WorkflowRun` with an
`error` saying why, never as an exception: bad code, an exception, a run past `time_limit_s` (the process group
is killed), more than `max_calls` executor calls, or a line that is not the protocol.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from agent.executor import Executor, ExecutorError
from sandbox.run import SandboxLimits, spawn_sandboxed

MAIN = Path(__file__).with_name("sandbox_main.py")
MAX_LINE = 2**20


@dataclass(frozen=True)
class WorkflowLimits:
    time_limit_s: float = 60.0  # the whole workflow, executor calls included
    max_calls: int = 8  # executor calls per workflow
    call_max_tokens: int = 256  # the most an operator may ask the executor for
    memory_mb: int = 1024


class CallRequest(BaseModel):
    """One executor call as an operator sends it."""

    messages: list[dict[str, str]] = Field(min_length=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)


class CallBatch(BaseModel):
    calls: list[CallRequest] = Field(min_length=1)


@dataclass
class WorkflowRun:
    answer: str | None = None
    error: str | None = None  # why the workflow gave no usable answer; None when it returned one
    timed_out: bool = False
    over_call_limit: bool = False
    stdout: str = ""
    stderr: str = ""
    elapsed: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)  # {"prompt", "response", "execution_time"}
    prompt_tokens: int = 0
    completion_tokens: int = 0
    executor_errors: int = 0


async def _answer(executor: Executor, request: CallRequest, limits: WorkflowLimits, run: WorkflowRun) -> dict:
    max_tokens = min(request.max_tokens or limits.call_max_tokens, limits.call_max_tokens)
    started = time.monotonic()
    prompt = request.messages[-1].get("content", "")
    try:
        reply = await executor.complete(request.messages, max_tokens=max_tokens, temperature=request.temperature)
    except ExecutorError as exc:
        run.executor_errors += 1
        run.calls.append({"prompt": prompt, "response": f"[executor error: {exc}]",
                          "execution_time": time.monotonic() - started})
        return {"error": f"executor: {exc}"}
    run.prompt_tokens += reply.prompt_tokens
    run.completion_tokens += reply.completion_tokens
    run.calls.append({"prompt": prompt, "response": reply.text, "execution_time": time.monotonic() - started,
                      "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens})
    return {"text": reply.text}


async def _converse(proc: asyncio.subprocess.Process, executor: Executor, limits: WorkflowLimits,
                    run: WorkflowRun) -> None:
    """Answer call batches until the `done` line; errors are set on `run`."""
    assert proc.stdout is not None and proc.stdin is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            run.error = "the workflow process died before it returned (see stderr)"
            return
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            run.error = f"the workflow broke the operator protocol: {line[:120]!r}"
            return
        if isinstance(message, dict) and isinstance(message.get("done"), dict):
            done = message["done"]
            run.stdout = str(done.get("stdout") or "")
            answer, error = done.get("answer"), done.get("error")
            run.answer = answer if isinstance(answer, str) else None
            run.error = f"the workflow raised: {error.strip()}" if isinstance(error, str) and error else None
            return
        try:
            batch = CallBatch.model_validate(message)
        except ValidationError as exc:
            run.error = f"bad operator call: {exc.errors()[0]['msg']}"
            return
        if len(run.calls) + len(batch.calls) > limits.max_calls:
            run.over_call_limit = True
            run.error = f"too many executor calls: the limit is {limits.max_calls} per workflow"
            return
        replies = await asyncio.gather(*(_answer(executor, r, limits, run) for r in batch.calls))
        proc.stdin.write((json.dumps({"replies": replies}) + "\n").encode())
        await proc.stdin.drain()


async def _drain(stream: asyncio.StreamReader | None, kept: bytearray, bound: int) -> None:
    while stream is not None and (chunk := await stream.read(65536)):
        if len(kept) < bound:
            kept.extend(chunk[: bound - len(kept)])


async def run_workflow(code: str, problem: str, domain: str, workdir: Path, executor: Executor,
                       limits: WorkflowLimits) -> WorkflowRun:
    """Run `code` (which must define `solve(problem, domain)`) in the sandbox in `workdir`. Raises only
    SandboxUnavailable (no sandbox and no opt-out: the trainer refuses to start before that)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "workflow.py").write_text(code)
    (workdir / "task.json").write_text(json.dumps({"problem": problem, "domain": domain}))
    run = WorkflowRun()
    started = time.monotonic()
    sandbox_limits = SandboxLimits(wall_s=limits.time_limit_s, cpu_s=max(1, int(limits.time_limit_s)),
                                   memory_mb=limits.memory_mb, max_processes=16)
    sandboxed = await spawn_sandboxed([sys.executable, "-u", str(MAIN), "workflow.py", "task.json"], workdir,
                                      sandbox_limits, stdin=asyncio.subprocess.PIPE)
    err = bytearray()
    stderr_task = asyncio.ensure_future(_drain(sandboxed.proc.stderr, err, 8000))
    try:
        await asyncio.wait_for(_converse(sandboxed.proc, executor, limits, run), limits.time_limit_s)
    except TimeoutError:
        run.timed_out = True
        run.answer = None
        run.error = f"the workflow ran past its time limit of {limits.time_limit_s:g} s and was stopped"
    except (ConnectionError, ValueError) as exc:  # a closed pipe, a line over the stream's limit
        run.error = f"the workflow's channel failed: {type(exc).__name__}"
    finally:
        await sandboxed.kill()
        try:
            await asyncio.wait_for(stderr_task, 5)
        except TimeoutError:
            stderr_task.cancel()
    run.stderr = err.decode(errors="replace")
    run.elapsed = time.monotonic() - started
    if run.error is None and run.answer is None:
        run.error = "the workflow returned no answer"
    return run
