"""The workflow env's tasks: bundled offline data (the planner env's seeded generator of multi-step word problems
with exact answers, a small QA set, a small code set with tests), GSM8K for math (`--dataset gsm8k`, needs the
hub) or a user's `--dataset FILE.jsonl`, mixed by domain ratio.

A row is `{"domain": "math"|"qa"|"code", "question": str, "answer": ..., "id"?: str}`; qa rows may add
`"aliases": [str]`, code rows need `"entry_point": str` and `"tests": [str]` (assert lines) instead of an answer.
A file is .jsonl, or .parquet with these columns or in verl's layout (envs/verl_layout.py): the domain as
`extra_info.domain` (else `ability`), the answer as `reward_model.ground_truth` (a code row's: JSON of entry_point
and tests), aliases and the question in `extra_info`. A bad row is one `DatasetError` line naming the row and the
field, raised before any work.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from envs.workflow.options import DOMAINS, WorkflowOptions
from envs.workflow.reward import parse_number
from rollouts.scenario import DatasetError, Scenario

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
    """A jsonl (or parquet) file of rows, every row checked before any work."""
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"--dataset: no such file {str(file)!r}")
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file)
        except Exception as exc:  # a text file named .parquet, a cut download
            raise DatasetError(f"--dataset {file}: not a readable parquet file ({exc.__class__.__name__})") from None
        rows = [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]
        if not rows:
            raise DatasetError(f"--dataset: {file.name} holds no rows")
        return [scenario_from_row(row, f"{file.name} row {number}") for number, row in enumerate(rows, 1)]
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


def scenarios_for(cfg: Any, split: str = "train") -> list[Scenario]:
    """A run's tasks (`split` train or val) from its config: `--dataset-size` of them (default 64; a third, at
    least 4, for val: 21 by default), or a verl file's first `--dataset-size`; light: the spec and `tasks` call it
    without art."""
    from envs.options import options_for
    from envs.verl_layout import is_verl

    count = cfg.dataset_size or 64
    ratios = options_for(cfg, WorkflowOptions).ratios()
    scenarios = load_tasks(ratios, count if split == "train" else max(4, count // 3), cfg.seed, split, cfg.dataset)
    return scenarios[:count] if is_verl(cfg.dataset) and cfg.dataset_size and split == "train" else scenarios


def load_tasks(ratios: dict[str, float], count: int, seed: int, split: str, dataset: str | None) -> list[Scenario]:
    """The split's scenarios: from a `dataset` file (the same rows for every split: hold out data with a file of
    your own) or the bundled sets, mixed by `ratios`; `dataset='gsm8k'` takes the math tasks from GSM8K (its
    test split for val). The bundled val split uses the generator's val problems and the QA and code rows marked
    `"split": "val"`, so the train split never holds a val task. A verl file is its tasks, whole and in order (its
    val file beside it for val, else itself): nothing mixed or redrawn."""
    from envs.verl_layout import is_verl, val_file

    if is_verl(dataset):
        return verl_scenarios(Path(dataset) if split == "train" else val_file(Path(dataset)))
    if dataset and dataset != GSM8K:
        rows = read_dataset(dataset)
        pools = {d: [s for s in rows if s.data["domain"] == d] for d in DOMAINS}
    else:
        pools = {"math": gsm8k_scenarios(split) if dataset == GSM8K else math_scenarios(max(count, 8), seed, split)}
        for domain in ("qa", "code"):
            rows_ = [row for row in _bundled(f"{domain}.jsonl", domain) if row.get("split", "train") == split]
            pools[domain] = [scenario_from_row(row, f"bundled {row['id']}") for row in rows_]
    return mix(pools, ratios, count, seed if split == "train" else seed + 1)


# ---- verl's layout -----------------------------------------------------------------------------------------------


def verl_rows(items: list[tuple[Scenario, str]], out: Path, cfg: Any) -> list[dict[str, Any]]:
    """The tasks as verl rows: the rollout's two messages (at the run's call and time limits), the answer as the
    ground truth (a code task's: JSON of its entry point and tests), the question and aliases in `extra_info`."""
    from envs.options import options_for
    from envs.verl_layout import row
    from envs.workflow.prompts import WORKFLOW_SYSTEM_PROMPT, workflow_task

    options = options_for(cfg, WorkflowOptions)
    rows = []
    for index, (scenario, split) in enumerate(items):
        data, domain = scenario.data, scenario.data["domain"]
        extra: dict[str, Any] = {"env": "workflow", "task_id": scenario.id, "index": index, "split": split,
                                 "domain": domain, "question": scenario.prompt, "aliases": []}
        if domain == "code":
            truth = json.dumps({"entry_point": data["entry_point"], "tests": data["tests"]})
        else:
            truth, extra["aliases"] = data["answers"][0], list(data["answers"][1:])
        task = workflow_task(scenario.prompt, domain, options.max_executor_calls, options.workflow_time_limit)
        rows.append(row(f"workflow/{domain}", [{"role": "system", "content": WORKFLOW_SYSTEM_PROMPT},
                                               {"role": "user", "content": task}], domain, truth, extra))
    return rows


def verl_scenarios(path: Path) -> list[Scenario]:
    """A verl file's tasks, each checked with the field named as the file holds it; the file's rows whole."""
    from envs.verl_layout import read

    scenarios = []
    for row in read(path):
        domain = row.extra_info.get("domain", row.ability)
        if domain not in DOMAINS:
            raise row.fail("extra_info.domain", f"(or ability) must be one of {', '.join(DOMAINS)}, got {domain!r}")
        own: dict[str, Any] = {"domain": domain, "question": row.text("question") or row.user_text(),
                               "id": row.task_id("workflow")}
        truth = row.ground_truth
        if domain == "code":
            try:
                spec = json.loads(truth) if isinstance(truth, str) else None
            except json.JSONDecodeError:
                spec = None
            if not isinstance(spec, dict):
                raise row.fail("reward_model.ground_truth", "must be JSON {entry_point, tests} for a code task")
            tests = spec.get("tests")
            if not isinstance(spec.get("entry_point"), str) or not spec["entry_point"].strip():
                raise row.fail("reward_model.ground_truth", "lacks entry_point (the function's name)")
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
                raise row.fail("reward_model.ground_truth", "lacks tests (a non-empty list of assert lines)")
            own.update(entry_point=spec["entry_point"], tests=tests)
        else:
            if isinstance(truth, int | float) and not isinstance(truth, bool):
                truth = str(truth)
            if not isinstance(truth, str) or not truth.strip():
                raise row.fail("reward_model.ground_truth", "must be the answer (a non-empty string or number)")
            if domain == "math" and parse_number(truth) is None:
                raise row.fail("reward_model.ground_truth", f"must be a number for a math task, got {truth!r}")
            aliases = row.extra_info.get("aliases", [])
            if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
                raise row.fail("extra_info.aliases", "must be a list of strings")
            own.update(answer=truth, aliases=aliases)
        scenarios.append(scenario_from_row(own, f"{row.source}, row {row.index}"))
    return scenarios
