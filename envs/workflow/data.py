"""The workflow env's tasks: bundled offline data (a seeded generator of multi-step word problems with exact
answers, a small QA set, a small code set with tests) or a user's `--dataset FILE.jsonl`, mixed by domain ratio.

A row is `{"domain": "math"|"qa"|"code", "question": str, "answer": ..., "id"?: str}`; qa rows may add
`"aliases": [str]`, code rows need `"entry_point": str` and `"tests": [str]` (assert lines) instead of an answer.
A bad row is one `DatasetError` line naming the row and the field, raised before any work.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envs.scenario import DatasetError, Scenario
from rewards.workflow import parse_number

DOMAINS = ("math", "qa", "code")
HERE = Path(__file__).parent


def _shop(r: random.Random) -> tuple[str, int]:
    boxes, per_box, sold = r.randint(3, 12), r.randint(4, 15), r.randint(1, 20)
    return (f"A shop has {boxes} boxes with {per_box} apples in each box. It sells {sold} apples. "
            "How many apples are left?", boxes * per_box - sold)


def _wages(r: random.Random) -> tuple[str, int]:
    rate, hours, days, spent = r.randint(8, 25), r.randint(2, 8), r.randint(2, 6), r.randint(5, 40)
    return (f"Maya earns ${rate} an hour. She works {hours} hours a day for {days} days, then spends ${spent} "
            "on books. How many dollars does she have left?", rate * hours * days - spent)


def _trip(r: random.Random) -> tuple[str, int]:
    speed, first, second = r.randint(30, 70), r.randint(1, 4), r.randint(1, 3)
    return (f"A bus drives at {speed} km per hour for {first} hours, stops, then drives {second} more hours at "
            "the same speed. How many kilometres does it drive in all?", speed * (first + second))


def _share(r: random.Random) -> tuple[str, int]:
    friends, each, extra = r.randint(2, 6), r.randint(3, 9), r.randint(1, 10)
    total = friends * each + extra
    return (f"Tom has {total} stickers. He keeps {extra} and shares the rest equally among {friends} friends. "
            "How many stickers does each friend get?", each)


def _garden(r: random.Random) -> tuple[str, int]:
    rows, per_row, eaten, bought = r.randint(3, 9), r.randint(5, 12), r.randint(2, 10), r.randint(5, 20)
    return (f"A garden has {rows} rows of {per_row} tulips. Rabbits eat {eaten} tulips and the gardener plants "
            f"{bought} new ones. How many tulips are in the garden now?", rows * per_row - eaten + bought)


def _discount(r: random.Random) -> tuple[str, int]:
    price, count, percent = r.randint(2, 20) * 10, r.randint(2, 5), r.choice([10, 20, 25, 50])
    return (f"A jacket costs ${price}. Lena buys {count} jackets in a sale with {percent}% off. How many dollars "
            "does she pay?", price * count * (100 - percent) // 100)


TEMPLATES: tuple[Callable[[random.Random], tuple[str, int]], ...] = (_shop, _wages, _trip, _share, _garden, _discount)


def math_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` GSM8K-style problems from seeded templates; the same seed always gives the same problems."""
    r = random.Random(f"workflow-math:{seed}")
    rows = []
    for i in range(count):
        question, answer = r.choice(TEMPLATES)(r)
        rows.append({"id": f"math-{seed}-{i}", "domain": "math", "question": question, "answer": str(answer)})
    return rows


def _bundled(name: str, domain: str) -> list[dict[str, Any]]:
    return [{**json.loads(line), "domain": domain}
            for line in (HERE / name).read_text().splitlines() if line.strip()]


def bundled_rows(domain: str, seed: int, count: int) -> list[dict[str, Any]]:
    if domain == "math":
        return math_rows(count, seed)
    return _bundled("qa.jsonl" if domain == "qa" else "code.jsonl", domain)


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
    """The split's scenarios: from `dataset` (the same rows for every split: hold out data with a file of your
    own) or the bundled sets, mixed by `ratios`. The bundled val split uses other generator seeds and the other
    half of the QA and code sets, so the train split never holds a val task."""
    if dataset:
        rows = read_dataset(dataset)
        pools = {d: [s for s in rows if s.data["domain"] == d] for d in DOMAINS}
    else:
        pools = {}
        for domain in DOMAINS:
            if domain == "math":
                rows_ = math_rows(max(count, 8), seed if split == "train" else seed + 10_000)
            else:
                every = bundled_rows(domain, seed, count)
                rows_ = every[: len(every) * 3 // 4] if split == "train" else every[len(every) * 3 // 4:]
            pools[domain] = [scenario_from_row(row, f"bundled {row['id']}") for row in rows_]
    return mix(pools, ratios, count, seed if split == "train" else seed + 1)
