"""The planner's answer format and the executor's prompts.

The planner answers one JSON object: `{"subproblems": ["...", ...], "combine": "..."}` (combine optional), or
`{"atomic": true}` to have the executor solve the whole problem directly. A fenced ```json block or text around
the object is tolerated; anything else is malformed, with a short reason that becomes a metric name. So is a key
the format does not have: a plan that carries its own `answers`, `final_answer` or token counts is trying to speak
for the executor, and nothing of it is read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

PLANNER_SYSTEM_PROMPT = (
    "You plan how to solve a math word problem; another model does the solving. Split the problem into short, "
    "self-contained subproblems that can be solved independently (each must state the numbers it needs), and say "
    "how to combine their answers. Reply with JSON only:\n"
    '{"subproblems": ["How many pencils are in 3 packs of 12?", "..."], "combine": "add the answers"}\n'
    'If the problem needs no splitting, reply {"atomic": true}.'
)
EXECUTOR_SYSTEM_PROMPT = "Solve the problem. Be brief. End with a line '#### N' where N is the number."
_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
PLAN_KEYS = frozenset({"subproblems", "combine", "atomic"})


@dataclass(frozen=True)
class Plan:
    subproblems: tuple[str, ...] = ()
    combine: str = ""
    atomic: bool = False


class MalformedPlan(ValueError):
    """`reason` is a short snake_case word for the metrics (`malformed_<reason>`); the message says more."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _json_object(text: str) -> object:
    fenced = _FENCED.search(text)
    candidate = fenced.group(1) if fenced else text
    start, end = candidate.find("{"), candidate.rfind("}")
    if start < 0 or end <= start:
        raise MalformedPlan("not_json", "no JSON object in the reply")
    try:
        return json.loads(candidate[start:end + 1])
    except json.JSONDecodeError as exc:
        raise MalformedPlan("not_json", f"invalid JSON: {exc.msg}") from None


def parse_plan(text: str, max_subproblems: int) -> Plan:
    data = _json_object(text)
    if not isinstance(data, dict):
        raise MalformedPlan("not_object", "the JSON is not an object")
    if unknown := sorted(str(k) for k in data if k not in PLAN_KEYS):
        raise MalformedPlan("unknown_field", f"unknown field(s) {', '.join(unknown)[:80]}; a plan has only "
                            "subproblems, combine and atomic")
    if data.get("atomic") is True and not data.get("subproblems"):
        return Plan(atomic=True)
    items = data.get("subproblems")
    if not isinstance(items, list) or not items:
        raise MalformedPlan("no_subproblems", "'subproblems' must be a non-empty list (or give \"atomic\": true)")
    if not all(isinstance(s, str) and s.strip() for s in items):
        raise MalformedPlan("bad_subproblem", "every subproblem must be a non-empty string")
    if len(items) > max_subproblems:
        raise MalformedPlan("too_many_subproblems", f"{len(items)} subproblems; at most {max_subproblems}")
    combine = data.get("combine", "")
    if not isinstance(combine, str):
        raise MalformedPlan("bad_combine", "'combine' must be a string")
    return Plan(subproblems=tuple(s.strip() for s in items), combine=combine.strip())


def solve_messages(problem: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": EXECUTOR_SYSTEM_PROMPT}, {"role": "user", "content": problem}]


def combine_messages(question: str, plan: Plan, answers: list[str]) -> list[dict[str, str]]:
    """The executor sees the original question, each subproblem with its answer, and the planner's instruction."""
    parts = "\n".join(f"{i}. {s}\n   answer: {a.strip()}" for i, (s, a) in enumerate(zip(plan.subproblems, answers,
                                                                                          strict=True), 1))
    how = plan.combine or "Combine the answers to answer the question."
    return solve_messages(f"Question: {question}\n\nSolved parts:\n{parts}\n\nInstruction: {how}")
