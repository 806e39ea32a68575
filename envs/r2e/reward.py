"""Test-based rewards for the REPL env: parse pytest's output into per-test statuses, compare with the expected.

Keys of the expected statuses may be full node ids (`tests/test_x.py::Class::test_y`), `Class.test_y`, or
`test_y`; each is matched against the parsed node ids by the most specific form it gives.
"""

from __future__ import annotations

import re

_SUMMARY = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(\S+?)(?:\s+-\s.*)?$")
_VERBOSE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_pytest_output(output: str) -> dict[str, str]:
    """Node id -> status from `-rA` summary lines and `-v` lines. A node reported with two different statuses
    gets "CONFLICT", which matches no expected status: pytest reports each test's outcome once, so a second,
    different line for it was printed by someone else (code under test printing PASSED lines at exit, say)."""
    seen: dict[str, set[str]] = {}
    for line in output.splitlines():
        line = line.strip()
        match = _SUMMARY.match(line)
        node, status = (match.group(2), match.group(1)) if match else (None, None)
        if node is None and (match := _VERBOSE.match(line)):
            node, status = match.group(1), match.group(2)
        if node is not None and status is not None:
            seen.setdefault(node, set()).add(status)
    return {node: statuses.pop() if len(statuses) == 1 else "CONFLICT" for node, statuses in seen.items()}


def _forms(node_id: str) -> set[str]:
    parts = node_id.split("::")
    names = parts[1:] if len(parts) > 1 else parts
    return {node_id, ".".join(names), names[-1], node_id.split("[")[0]}


def match_expected(expected: dict[str, str], actual: dict[str, str]) -> dict[str, str | None]:
    """Expected key -> the status found for it (None when the test did not run or was not found)."""
    found: dict[str, str | None] = {}
    for key in expected:
        if key in actual:
            found[key] = actual[key]
            continue
        candidates = [status for node, status in actual.items() if key in _forms(node)]
        found[key] = candidates[0] if len(candidates) == 1 else None
    return found


def partial_test_reward(expected: dict[str, str], output: str) -> tuple[float, dict[str, float]]:
    found = match_expected(expected, parse_pytest_output(output))
    hits = sum(found[k] == v for k, v in expected.items())
    share = hits / len(expected) if expected else 0.0
    return share, {"tests_expected": float(len(expected)), "tests_matching": float(hits),
                   "tests_not_found": float(sum(v is None for v in found.values())), "test_share": share}


def binary_test_reward(expected: dict[str, str], output: str) -> tuple[float, dict[str, float]]:
    share, breakdown = partial_test_reward(expected, output)
    return float(share == 1.0), breakdown


REWARDS = {"binary": binary_test_reward, "partial": partial_test_reward}
