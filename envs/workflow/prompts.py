"""What the policy reads in the workflow env: the operators it may call (their behaviour lives in
`sandbox_main.py`, which runs them in the sandbox) and the task. Kept here, beside the operators, so a change to
one is a change to the other in the same folder."""

from __future__ import annotations

import re

WORKFLOW_SYSTEM_PROMPT = """You design a small workflow that solves a task by calling an executor model.
Answer with one ```python code block defining `def solve(problem: str, domain: str) -> str`; `domain` is
"math", "qa" or "code". solve returns the final answer: a number for math, a short phrase for qa, the complete
Python function for code. These operators are already defined (no imports needed):
- answer(question, temperature=0.0) -> str: the executor solves it step by step; returns its final answer only
- ask(prompt, temperature=0.0) -> str: one executor call, its whole reply
- ask_many(prompts, temperature=0.7) -> list[str]: several calls at once
- program(task, temperature=0.0) -> str: the executor writes Python code; returns the code
- run(code) -> str: runs Python code (5 s at most), returns what it printed or the error
- test(code, tests) -> dict: runs code then each assert line; {"passed": k, "total": n, "failures": [...]}
- ensemble(candidates) -> str: the most common answer among candidates
- revise(question, draft, feedback) -> str: the executor improves a draft
- extract_answer(text) -> str: the text after the last "Answer:" line
Executor calls are limited per workflow and the whole workflow has a time limit. Example:
```python
def solve(problem, domain):
    if domain == "code":
        return program(problem)
    return ensemble([answer(problem, temperature=0.7) for _ in range(3)])
```"""

_DOMAIN_HINT = {
    "math": "The answer is a number.",
    "qa": "The answer is a short phrase.",
    "code": "The answer is the complete Python function; hidden tests will check it.",
}
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def workflow_task(problem: str, domain: str, max_calls: int, time_limit_s: float) -> str:
    return (f"Domain: {domain}. {_DOMAIN_HINT[domain]}\nTask:\n{problem}\n\n"
            f"Write solve(problem, domain). At most {max_calls} executor calls and {time_limit_s:g} s.")


def workflow_code(reply: str) -> str | None:
    """The workflow in a reply: its last fenced python block, or the whole reply when it defines solve and has
    no fence; None when there is no workflow."""
    blocks = _FENCE.findall(reply)
    if blocks:
        return blocks[-1]
    return reply if "def solve" in reply else None


# The SFT demonstrations' workflows (--sft-demos), one per domain: short, valid, and a sensible use of the
# operators, so a warm-started policy writes runnable workflows and RL can improve on them.
DEMO_WORKFLOWS = {
    "math": ("```python\ndef solve(problem, domain):\n"
             "    votes = [answer(problem, temperature=0.7) for _ in range(3)]\n"
             "    return ensemble(votes)\n```"),
    "qa": "```python\ndef solve(problem, domain):\n    return answer(problem)\n```",
    "code": ("```python\ndef solve(problem, domain):\n    code = program(problem)\n"
             "    if 'def ' not in code:\n        code = program(problem, temperature=0.7)\n    return code\n```"),
}
