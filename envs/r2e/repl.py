"""`Repl`: a persistent Python REPL subprocess, sandboxed in a rollout's work dir (never `exec` in the trainer).

Each cell has a wall-clock timeout; a cell that runs over, or kills the REPL, ends with the REPL restarted once
per event (state lost, and the observation says so). `llm_query()` calls made inside a cell are answered by the
`on_llm_query` callback the rollout provides, so the sandbox itself never needs network access. The REPL runs in
`sandbox.run` like every other piece of model code: with no sandbox and no opt-out, `start()` raises
`SandboxUnavailable` and nothing runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.run import SandboxedProcess, SandboxLimits, spawn_sandboxed

SERVER = Path(__file__).with_name("repl_server.py")


@dataclass
class CellResult:
    stdout: str = ""
    stderr: str = ""
    locals: dict[str, str] = field(default_factory=dict)
    final: str | None = None
    error: str | None = None
    timed_out: bool = False
    restarted: bool = False
    execution_time: float = 0.0
    llm_calls: list[dict[str, str]] = field(default_factory=list)


class Repl:
    def __init__(self, workdir: Path, limits: SandboxLimits, cell_timeout_s: float,
                 on_llm_query: Callable[[str], Awaitable[str]] | None = None):
        self.workdir, self.limits, self.cell_timeout_s = workdir, limits, cell_timeout_s
        self.on_llm_query = on_llm_query
        self.sandboxed: SandboxedProcess | None = None
        self.restarts = 0

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.sandboxed.proc if self.sandboxed is not None else None

    async def start(self) -> None:
        self.sandboxed = await spawn_sandboxed([sys.executable, "-u", str(SERVER)], self.workdir, self.limits,
                                               stdin=asyncio.subprocess.PIPE)

    async def close(self) -> None:
        if self.sandboxed is not None:
            sandboxed, self.sandboxed = self.sandboxed, None
            await sandboxed.kill()

    async def restart(self) -> None:
        await self.close()
        self.restarts += 1
        await self.start()

    async def run_cell(self, code: str) -> CellResult:
        if self.proc is None or self.proc.returncode is not None:
            await self.restart()
        started = time.monotonic()
        calls: list[dict[str, str]] = []
        try:
            reply = await asyncio.wait_for(self._exchange(code, calls), self.cell_timeout_s)
        except TimeoutError:
            await self.restart()
            return CellResult(error=f"cell timed out after {self.cell_timeout_s:.0f} s; the REPL was restarted "
                                    "and its variables are gone (files you wrote are kept)",
                              timed_out=True, restarted=True, execution_time=time.monotonic() - started,
                              llm_calls=calls)
        except (ConnectionError, EOFError, json.JSONDecodeError) as exc:
            await self.restart()
            return CellResult(error=f"the REPL died ({exc.__class__.__name__}); it was restarted and its "
                                    "variables are gone (files you wrote are kept)",
                              restarted=True, execution_time=time.monotonic() - started, llm_calls=calls)
        return CellResult(stdout=reply["stdout"], stderr=reply["stderr"], locals=reply["locals"],
                          final=reply["final"], error=reply["error"], execution_time=time.monotonic() - started,
                          llm_calls=calls)

    async def _exchange(self, code: str, calls: list[dict[str, str]]) -> dict:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"code": code}) + "\n").encode())
        await self.proc.stdin.drain()
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise EOFError("REPL closed its output")
            message = json.loads(line)
            if "llm_query" not in message:
                return message
            prompt = message["llm_query"]
            if self.on_llm_query is None:
                response = "[llm_query is not available in this run]"
            else:
                response = await self.on_llm_query(prompt)
            calls.append({"prompt": prompt, "response": response})
            self.proc.stdin.write((json.dumps({"response": response}) + "\n").encode())
            await self.proc.stdin.drain()
