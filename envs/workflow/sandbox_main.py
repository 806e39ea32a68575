"""Runs one model-written workflow inside the sandbox: `python sandbox_main.py WORKFLOW.py TASK.json`, where the
task file holds `{"problem": str, "domain": str}`.

The sandbox has no network, so the operators reach the executor through the trainer: each executor call is one
JSON line on the protocol stream (the original stdout) and the trainer's answer is one JSON line on stdin. The
workflow's own prints go to a bounded buffer and fd 1 is pointed at stderr, so nothing it writes can be read as a
protocol line by accident. The last protocol line is `{"done": {"answer": ..., "error": ..., "stdout": ...}}`.
Stdlib only: this file is loaded by the sandboxed interpreter, never imported by the trainer.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import runpy
import subprocess
import sys
import tempfile
import traceback

MAX_PRINTED = 4000
RUN_TIMEOUT_S = 5.0
_protocol = None  # the saved stdout, set by main()
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


class OperatorError(RuntimeError):
    """An executor call failed or was refused (the trainer's reason); a workflow may catch it."""


def _rpc(requests: list[dict]) -> list[str]:
    assert _protocol is not None
    _protocol.write(json.dumps({"calls": requests}) + "\n")
    _protocol.flush()
    line = sys.stdin.readline()
    if not line:
        raise OperatorError("the trainer closed the executor channel")
    message = json.loads(line)
    if "refused" in message:
        raise OperatorError(message["refused"])
    texts = []
    for reply in message["replies"]:
        if "error" in reply:
            raise OperatorError(reply["error"])
        texts.append(reply["text"])
    return texts


def _request(prompt: str, system: str, temperature: float, max_tokens: int | None) -> dict:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": str(prompt)}]
    return {"messages": messages, "temperature": float(temperature), "max_tokens": max_tokens}


# ---- the operators (documented for the policy in envs/workflow/prompts.py) ----

def ask(prompt: str, temperature: float = 0.0, max_tokens: int | None = None) -> str:
    """One executor call with a plain prompt; returns its reply."""
    return _rpc([_request(prompt, "You are a helpful assistant.", temperature, max_tokens)])[0]


def ask_many(prompts: list[str], temperature: float = 0.7, max_tokens: int | None = None) -> list[str]:
    """Several executor calls at once (the trainer runs them concurrently); returns the replies in order."""
    return _rpc([_request(p, "You are a helpful assistant.", temperature, max_tokens) for p in prompts])


def extract_answer(text: str) -> str:
    """The text after the last 'Answer:' line, else the last non-empty line."""
    marks = re.findall(r"answer\s*:\s*(.+)", text, flags=re.IGNORECASE)
    if marks:
        return marks[-1].strip()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


ANSWER_SYSTEM = "Solve the problem step by step, then end with one line 'Answer: <final answer>'."


def answer(question: str, temperature: float = 0.0) -> str:
    """The executor solves the question; returns only its final answer."""
    return extract_answer(_rpc([_request(question, ANSWER_SYSTEM, temperature, None)])[0])


def program(task: str, temperature: float = 0.0) -> str:
    """The executor writes Python code for the task; returns the code (without markdown fences)."""
    system = "Write Python code for the task. Reply with one ```python code block and nothing else."
    reply = _rpc([_request(task, system, temperature, None)])[0]
    blocks = _FENCE.findall(reply)
    return (blocks[-1] if blocks else reply).strip()


def run(code: str) -> str:
    """Runs Python code in a fresh interpreter (inside this sandbox, a few seconds at most); returns what it printed,
    or the error."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", dir=".", delete=False) as f:
        f.write(code)
    try:
        done = subprocess.run([sys.executable, "-I", f.name], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        return (done.stdout + done.stderr)[-MAX_PRINTED:]
    except subprocess.TimeoutExpired:
        return f"timed out after {RUN_TIMEOUT_S:.0f} s"
    finally:
        os.unlink(f.name)


def test(code: str, tests: list[str]) -> dict:
    """Runs `code`, then each assert line of `tests`; returns {'passed': k, 'total': n, 'failures': [...]}."""
    script = code + "\n\nimport json as _j\n_r = []\n"
    for t in tests:
        script += (f"try:\n    exec({t!r})\n    _r.append(None)\n"
                   "except BaseException as _e:\n    _r.append(repr(_e)[:200])\n")
    script += "print('@@RESULTS@@' + _j.dumps(_r))\n"
    out = run(script)
    marker = out.rfind("@@RESULTS@@")
    if marker < 0:
        return {"passed": 0, "total": len(tests), "failures": [out[-500:] or "the code did not run"]}
    results = json.loads(out[marker + len("@@RESULTS@@"):].splitlines()[0])
    failures = [f"{t}: {r}" for t, r in zip(tests, results, strict=False) if r is not None]
    return {"passed": len(tests) - len(failures), "total": len(tests), "failures": failures}


def ensemble(candidates: list[str]) -> str:
    """Majority vote over candidate answers (compared case- and space-insensitively); ties go to the earliest."""
    cleaned = [str(c).strip() for c in candidates if str(c).strip()]
    if not cleaned:
        return ""
    counts = collections.Counter(" ".join(c.lower().split()) for c in cleaned)
    best = max(counts.values())
    return next(c for c in cleaned if counts[" ".join(c.lower().split())] == best)


def revise(question: str, draft: str, feedback: str) -> str:
    """The executor improves a draft answer given feedback; returns the new draft (the whole reply)."""
    prompt = f"Problem:\n{question}\n\nDraft:\n{draft}\n\nFeedback:\n{feedback}\n\nWrite an improved version."
    return _rpc([_request(prompt, "You revise drafts carefully.", 0.0, None)])[0]


OPERATORS = {f.__name__: f for f in (ask, ask_many, answer, program, run, test, ensemble, revise, extract_answer)}


class _Bounded(io.StringIO):
    def write(self, s: str) -> int:
        if self.tell() < MAX_PRINTED:
            super().write(s[: MAX_PRINTED - self.tell()])
        return len(s)


def main() -> int:
    global _protocol
    _protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a stray write to fd 1 (a child, os.write) lands in stderr, not in the protocol
    printed = _Bounded()
    sys.stdout = printed
    answer_text, error = None, None
    try:
        namespace = runpy.run_path(sys.argv[1], init_globals=dict(OPERATORS, OperatorError=OperatorError))
        solve = namespace.get("solve")
        if not callable(solve):
            raise NameError("the workflow defines no function solve(problem, domain)")
        with open(sys.argv[2]) as f:
            task = json.load(f)
        result = solve(task["problem"], task["domain"])
        answer_text = result if isinstance(result, str) else json.dumps(result, default=str)
    except BaseException as exc:  # the workflow's fault, reported, never raised past here
        tb = traceback.format_exception(exc, limit=-3)
        error = "".join(tb)[-1500:]
    _protocol.write(json.dumps({"done": {"answer": answer_text, "error": error, "stdout": printed.getvalue()}})
                    + "\n")
    _protocol.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
