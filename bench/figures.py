"""One machine-readable line per headline figure, so `bench/run_all.py` can build docs/PERFORMANCE.md from what the
benches printed instead of from numbers copied by hand."""

from __future__ import annotations

import json
import operator

PREFIX = "FIGURE\t"
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def meets(value: float, goal: str) -> bool:
    """`goal` reads like '>= 0.95' or '< 50'."""
    op, threshold = goal.split()
    return _OPS[op](value, float(threshold))


def figure(name: str, value: float, goal: str | None = None, unit: str = "") -> None:
    record = {"name": name, "value": round(float(value), 4), "unit": unit, "goal": goal,
              "met": None if goal is None else meets(value, goal)}
    print(PREFIX + json.dumps(record), flush=True)


def parse(output: str) -> list[dict]:
    return [json.loads(line[len(PREFIX):]) for line in output.splitlines() if line.startswith(PREFIX)]
