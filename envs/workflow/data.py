"""The workflow env's tasks: bundled offline data (the planner env's seeded generator of multi-step word problems
with exact answers, a small QA set, a small code set with tests), GSM8K for math (`--dataset gsm8k`, needs the
hub) or a user's `--dataset FILE.jsonl`, mixed by domain ratio.

A row is `{"domain": "math"|"qa"|"code", "question": str, "answer": ..., "id"?: str}`; qa rows may add
`"aliases": [str]`, code rows need `"entry_point": str` and `"tests": [str]` (assert lines) instead of an answer.
A bad row is one `DatasetError` line naming the row and the field, raised before any work.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from envs.workflow.reward import parse_number
from rollouts.scenario import DatasetError, Scenario

DOMAINS = ("math", "qa", "code")
GSM8K = "gsm8k"
HERE = Path(__file__).parent


def math_scenarios(count: int, seed: int, split: str = "train") -> list[Scenario]:
    """`count` GSM8K-style problems with exact answers from the planner env's seeded generator (the same seed
    always gives the same problems; the val split never repeats a train problem)."""
    from envs.planner.problems import generate

    return [_math(s) for s in generate(count, seed, split)]


def gsm8k_scenarios(split: str) -> list[Scenario]:
    """GSM8K from the hub (`--dataset gsm8k`; the planner env's loader): one DatasetError line when unreachable."""
    from envs.planner.problems import load_gsm8k

    return [_math(s) for s in load_gsm8k("train" if split == "train" else "test")]


def _math(planner_scenario: Scenario) -> Scenario:
    return Scenario(f"math-{planner_scenario.id}", planner_scenario.prompt,
                    {"domain": "math", "answers": [planner_scenario.data["answer"]]})


def _bundled(name: str, domain: str) -> list[dict[str, Any]]:
    return [{**json.loads(line), "domain": domain}
            for line in (HERE / name).read_text().splitlines() if line.strip()]


def _need_str(row: dict[str, Any], field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: field {field!r} must be a non-empty string")
    return value


def scenario_from_row(row: Any, where: str) -> Scenario:
    """One row -> a checked Scenario; DatasetError naming `where` (the row) and the field otherwise."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: a row must be a JSON object")
    domain = row.get("domain")
    if domain not in DOMAINS:
        raise DatasetError(f"{where}: field 'domain' must be one of {', '.join(DOMAINS)}, got {domain!r}")
    question = _need_str(row, "question", where)
    data: dict[str, Any] = {"domain": domain}
    if domain == "code":
        data["entry_point"] = _need_str(row, "entry_point", where)
        tests = row.get("tests")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
            raise DatasetError(f"{where}: field 'tests' must be a non-empty list of strings")
        data["tests"] = list(tests)
    else:
        answer = row.get("answer")
        if isinstance(answer, int | float) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or not answer.strip():
            raise DatasetError(f"{where}: field 'answer' must be a non-empty string or number")
        if domain == "math" and parse_number(answer) is None:
            raise DatasetError(f"{where}: field 'answer' must be a number for a math row, got {answer!r}")
        aliases = row.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise DatasetError(f"{where}: field 'aliases' must be a list of strings")
        data["answers"] = [answer, *aliases]
    scenario_id = str(row.get("id") or where)
    return Scenario(id=scenario_id, prompt=question, data=data)


def read_dataset(path: str | Path) -> list[Scenario]:
    """A jsonl file, every row checked before any work."""
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"--dataset: no such file {str(file)!r}")
    scenarios = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file.name} row {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not JSON ({exc.msg})") from None
        scenarios.append(scenario_from_row(row, where))
    if not scenarios:
        raise DatasetError(f"--dataset: {file.name} holds no rows")
    return scenarios


def mix(pools: dict[str, list[Scenario]], ratios: dict[str, float], count: int, seed: int) -> list[Scenario]:
    """`count` scenarios drawn by domain ratio (largest remainder, so the counts sum to `count`), each domain's
    pool cycled in a seeded order, then shuffled with the same seed: a pure function of its inputs."""
    live = {d: w for d, w in ratios.items() if w > 0 and pools.get(d)}
    if not live:
        raise DatasetError("--domain-ratios: no domain with a positive ratio has any rows")
    total = sum(live.values())
    exact = {d: count * w / total for d, w in live.items()}
    counts = {d: int(v) for d, v in exact.items()}
    for d in sorted(live, key=lambda d: exact[d] - counts[d], reverse=True)[: count - sum(counts.values())]:
        counts[d] += 1
    r = random.Random(f"workflow-mix:{seed}")
    chosen: list[Scenario] = []
    for domain in sorted(counts):
        pool = list(pools[domain])
        r.shuffle(pool)
        chosen.extend(pool[i % len(pool)] for i in range(counts[domain]))
    r.shuffle(chosen)
    return chosen


def load_tasks(ratios: dict[str, float], count: int, seed: int, split: str, dataset: str | None) -> list[Scenario]:
    """The split's scenarios: from a `dataset` file (the same rows for every split: hold out data with a file of
    your own) or the bundled sets, mixed by `ratios`; `dataset='gsm8k'` takes the math tasks from GSM8K (its
    test split for val). The bundled val split uses the generator's val problems and the last quarter of the QA
    and code sets, so the train split never holds a val task."""
    if dataset and dataset != GSM8K:
        rows = read_dataset(dataset)
        pools = {d: [s for s in rows if s.data["domain"] == d] for d in DOMAINS}
    else:
        pools = {"math": gsm8k_scenarios(split) if dataset == GSM8K else math_scenarios(max(count, 8), seed, split)}
        for domain in ("qa", "code"):
            every = _bundled(f"{domain}.jsonl", domain)
            rows_ = every[: len(every) * 3 // 4] if split == "train" else every[len(every) * 3 // 4:]
            pools[domain] = [scenario_from_row(row, f"bundled {row['id']}") for row in rows_]
    return mix(pools, ratios, count, seed if split == "train" else seed + 1)
