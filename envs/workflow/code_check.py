"""Scores a code answer: runs it in the sandbox, returns the counts `envs.workflow.reward` turns into a tier. The
answer is model-made code, so it never runs in the trainer, and nothing it can do decides its own verdict:

- whether it "loads" (defines the entry point) is read from its syntax tree here, in the trainer;
- the sandboxed harness is given only each test's left side (`add(1, 2)` of `assert add(1, 2) == 3`) and prints
  what the answer's code returns for it; the expected values never enter the sandbox, and the comparison is made
  here, on plain data only (a value whose repr is not a Python literal counts as wrong, so an object that equals
  everything gains nothing).

Whatever the answer does in the harness (rebind `exec` or `json.dumps`, read the harness's globals, print a
verdict of its own, exit early) it can only change the values it reports, and it does not know which values pass.
A test that is not `assert X == literal`, `assert X is True/False/None`, `assert X` or `assert not X` runs whole in
the harness and its pass is the harness's report (weaker: the bundled tests all have the checked shapes).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.workflow.reward import CodeOutcome
from sandbox.run import SandboxLimits, run_sandboxed

MARKER = "@@WORKFLOW-VALUES@@"
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
MAX_REPR = 20_000
# The harness reports, per expression, the repr of its value, or None when it raised. `whole` tests (other shapes)
# are run as statements and report "True" when they did not raise.
HARNESS = f"""
import json, os, sys
dumps, write, _repr, _eval, _exec = json.dumps, os.write, repr, eval, exec  # before the answer can rebind them
with open('exprs.json') as f:
    ITEMS = json.load(f)
ns = {{}}
try:
    _exec(compile(open('answer.py').read(), 'answer.py', 'exec'), ns)
except BaseException:
    pass
out = []
for kind, source in ITEMS:
    try:
        if kind == 'whole':
            _exec(source, dict(ns))
            out.append('True')
        else:
            out.append(_repr(_eval(source, dict(ns)))[:{MAX_REPR}])
    except BaseException:
        out.append(None)
sys.stdout.flush()
write(1, ('\\n{MARKER}' + dumps(out) + '\\n').encode())
"""


@dataclass(frozen=True)
class Check:
    """One test: `kind` is "==", "is", "truthy", "falsy" (checked here) or "whole" (the harness's word)."""

    kind: str
    source: str  # the expression the harness evaluates (the whole test for "whole")
    expected: Any = None


def parse_test(test: str) -> Check:
    try:
        node = ast.parse(test.strip()).body[0]
    except (SyntaxError, IndexError):
        return Check("whole", test)
    if not isinstance(node, ast.Assert):
        return Check("whole", test)
    expr = node.test
    if isinstance(expr, ast.Compare) and len(expr.ops) == 1 and isinstance(expr.ops[0], ast.Eq | ast.Is):
        try:
            expected = ast.literal_eval(expr.comparators[0])
        except (ValueError, SyntaxError, TypeError):
            return Check("whole", test)
        if isinstance(expr.ops[0], ast.Is) and expected not in (True, False, None):
            return Check("whole", test)
        return Check("==" if isinstance(expr.ops[0], ast.Eq) else "is", ast.unparse(expr.left), expected)
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        return Check("falsy", ast.unparse(expr.operand))
    return Check("truthy", ast.unparse(expr))


def defines_entry(code: str, entry_point: str) -> bool:
    """The code compiles and binds `entry_point` at its top level (a def, a class, an assignment or an import)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == entry_point:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == entry_point for t in targets):
                return True
        if isinstance(node, ast.Import | ast.ImportFrom) and any(
                (alias.asname or alias.name.split(".")[0]) == entry_point for alias in node.names):
            return True
    return False


def _passes(check: Check, reported: Any) -> bool:
    if not isinstance(reported, str):
        return False
    if check.kind == "whole":
        return reported == "True"
    try:
        value = ast.literal_eval(reported)  # plain data only: an object with a custom __eq__ has no literal repr
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    if check.kind == "is":
        return value is check.expected
    if check.kind == "==":
        return bool(value == check.expected)
    return bool(value) if check.kind == "truthy" else not value


def code_of(answer: str) -> str:
    """The code in an answer: its last fenced block when it has one, else the whole text."""
    blocks = _FENCE.findall(answer)
    return blocks[-1] if blocks else answer


async def check_code(answer: str | None, entry_point: str, tests: list[str], workdir: Path,
                     time_limit_s: float = 20.0) -> CodeOutcome:
    if not answer or not answer.strip():
        return CodeOutcome(produced=False, loads=False, passed=0, total=len(tests))
    code = code_of(answer)
    if not defines_entry(code, entry_point):
        return CodeOutcome(produced=True, loads=False, passed=0, total=len(tests))
    checks = [parse_test(t) for t in tests]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "answer.py").write_text(code)
    (workdir / "exprs.json").write_text(json.dumps([[c.kind, c.source] for c in checks]))
    (workdir / "check.py").write_text(HARNESS)
    result = await run_sandboxed([sys.executable, "-I", "check.py"], workdir,
                                 SandboxLimits(wall_s=time_limit_s, cpu_s=int(time_limit_s), memory_mb=1024))
    at = result.stdout.rfind(MARKER)
    if result.timed_out or at < 0:
        return CodeOutcome(produced=True, loads=False, passed=0, total=len(tests))
    try:
        reported = json.loads(result.stdout[at + len(MARKER):].splitlines()[0])
    except (json.JSONDecodeError, IndexError):
        reported = []
    if not isinstance(reported, list):
        reported = []
    passed = sum(_passes(c, reported[i] if i < len(reported) else None) for i, c in enumerate(checks))
    return CodeOutcome(produced=True, loads=True, passed=passed, total=len(tests))
