"""Scores a code answer: runs it and the task's tests in the sandbox, returns the counts `rewards.workflow`
turns into a tier. The answer is model-made code, so it never runs in the trainer. The harness prints its
verdict after a marker holding a nonce that the harness reads and deletes before the answer runs, so an answer
that prints a verdict of its own is not believed; anything else it prints is ignored, and a run that dies or
times out before the marker is code that does not load."""

from __future__ import annotations

import json
import re
import secrets
import sys
from pathlib import Path

from envs.sandbox import SandboxLimits, run_sandboxed
from rewards.workflow import CodeOutcome

MARKER = "@@WORKFLOW-TESTS@@"
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
HARNESS = f"""
import json, os, sys
with open('nonce') as f:
    nonce = f.read()
os.unlink('nonce')
dumps, write = json.dumps, os.write  # kept before the answer runs: it may rebind module attributes
ns = {{}}
try:
    exec(compile(open('answer.py').read(), 'answer.py', 'exec'), ns)
    loads = callable(ns.get(ENTRY))
except BaseException:
    loads = False
passed = 0
if loads:
    for t in TESTS:
        try:
            exec(t, dict(ns))
            passed += 1
        except BaseException:
            pass
sys.stdout.flush()
write(1, ('\\n{MARKER}' + nonce + dumps({{'loads': loads is True, 'passed': int(passed)}}) + '\\n').encode())
"""


def code_of(answer: str) -> str:
    """The code in an answer: its last fenced block when it has one, else the whole text."""
    blocks = _FENCE.findall(answer)
    return blocks[-1] if blocks else answer


async def check_code(answer: str | None, entry_point: str, tests: list[str], workdir: Path,
                     time_limit_s: float = 20.0) -> CodeOutcome:
    if not answer or not answer.strip():
        return CodeOutcome(produced=False, loads=False, passed=0, total=len(tests))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "answer.py").write_text(code_of(answer))
    nonce = secrets.token_hex(16)
    (workdir / "nonce").write_text(nonce)
    (workdir / "check.py").write_text(f"ENTRY = {entry_point!r}\nTESTS = {tests!r}\n{HARNESS}")
    result = await run_sandboxed([sys.executable, "-I", "check.py"], workdir,
                                 SandboxLimits(wall_s=time_limit_s, cpu_s=int(time_limit_s), memory_mb=1024))
    at = result.stdout.rfind(MARKER + nonce)
    if result.timed_out or at < 0:
        return CodeOutcome(produced=True, loads=False, passed=0, total=len(tests))
    verdict = json.loads(result.stdout[at + len(MARKER + nonce):].splitlines()[0])
    passed = max(0, min(int(verdict["passed"]), len(tests)))
    return CodeOutcome(produced=True, loads=bool(verdict["loads"]), passed=passed, total=len(tests))
