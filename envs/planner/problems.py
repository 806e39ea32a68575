"""The planner env's problems: a bundled seeded generator of GSM8K-style multi-step word problems with exact
integer answers (the default, offline), GSM8K itself (`--dataset gsm8k`, needs the hub), or a `--dataset FILE`
(.jsonl or .parquet with `question` and `answer`, or a parquet in verl's layout: envs/verl_layout.py, the answer
as `reward_model.ground_truth`, the question as `extra_info.question` or the last user message).

Every row is checked before any work; a bad one stops the run with one line naming the row and the field. An
answer may be GSM8K's own form (reasoning, then `#### 42`): only the number after `####` (else the last number)
is kept.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollouts.scenario import DatasetError, Scenario

GSM8K = "gsm8k"
_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Isla", "Jonas", "Kemi", "Liam")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells")


def _plan(subproblems: list[str], combine: str) -> str:
    """A template's own decomposition, as the planner is asked to answer (the SFT demonstrations)."""
    return json.dumps({"subproblems": subproblems, "combine": combine})


def _shop(r: random.Random) -> tuple[str, int, str]:
    name, item = r.choice(_NAMES), r.choice(_ITEMS)
    packs, per_pack, price, spent_on_other = r.randint(2, 9), r.randint(3, 12), r.randint(2, 9), r.randint(5, 40)
    total_items = packs * per_pack
    text = (f"{name} buys {packs} packs of {item} with {per_pack} {item} in each pack. Each of the {item} costs "
            f"${price}. {name} also spends ${spent_on_other} on a bag. How many dollars does {name} spend in all?")
    plan = _plan([f"How many dollars do {packs} packs of {per_pack} {item} cost at ${price} for each one?"],
                 f"add the ${spent_on_other} bag")
    return text, total_items * price + spent_on_other, plan


def _share(r: random.Random) -> tuple[str, int, str]:
    a, b = r.sample(_NAMES, 2)
    item = r.choice(_ITEMS)
    friends, each, kept = r.randint(2, 8), r.randint(2, 9), r.randint(1, 20)
    start = friends * each + kept
    bought = r.randint(3, 30)
    text = (f"{a} has {start} {item}. {a} gives {each} {item} to each of {friends} friends, then {b} gives {a} "
            f"{bought} more. How many {item} does {a} have now?")
    plan = _plan([f"How many {item} are {friends} groups of {each}?"], f"subtract that from {start}, then add {bought}")
    return text, kept + bought, plan


def _work(r: random.Random) -> tuple[str, int, str]:
    name = r.choice(_NAMES)
    rate, weekday_hours, weekend_hours, weeks = r.randint(8, 25), r.randint(2, 6), r.randint(3, 9), r.randint(2, 5)
    text = (f"{name} earns ${rate} an hour. Each week {name} works {weekday_hours} hours on each of 5 weekdays and "
            f"{weekend_hours} hours on Saturday. How much does {name} earn in {weeks} weeks?")
    plan = _plan([f"How many dollars are {5 * weekday_hours} hours at ${rate} an hour?",
                  f"How many dollars are {weekend_hours} hours at ${rate} an hour?"],
                 f"add the two amounts, then multiply by {weeks} weeks")
    return text, rate * (5 * weekday_hours + weekend_hours) * weeks, plan


def _garden(r: random.Random) -> tuple[str, int, str]:
    name = r.choice(_NAMES)
    rows, per_row, eaten_share, extra = r.randint(3, 9), r.randint(4, 12), r.choice((2, 4)), r.randint(2, 15)
    total = rows * per_row * eaten_share  # divisible by eaten_share, so the half/quarter is whole
    text = (f"{name} plants {rows} rows with {per_row * eaten_share} carrots in each row. Rabbits eat "
            f"1/{eaten_share} of the carrots. {name} then plants {extra} more carrots. How many carrots are in the "
            f"garden now?")
    plan = _plan([f"How many carrots are {rows} rows of {per_row * eaten_share}?"],
                 f"take away 1/{eaten_share} of them, then add {extra}")
    return text, total - total // eaten_share + extra, plan


def _trip(r: random.Random) -> tuple[str, int, str]:
    name = r.choice(_NAMES)
    speed, hours, back_speed, back_hours = r.randint(30, 70), r.randint(2, 5), r.randint(20, 60), r.randint(1, 4)
    text = (f"{name} drives for {hours} hours at {speed} miles per hour, then drives back for {back_hours} hours at "
            f"{back_speed} miles per hour. How many miles does {name} drive in total?")
    plan = _plan([f"How many miles is {hours} hours at {speed} miles per hour?",
                  f"How many miles is {back_hours} hours at {back_speed} miles per hour?"], "add the two distances")
    return text, speed * hours + back_speed * back_hours, plan


TEMPLATES: tuple[Callable[[random.Random], tuple[str, int, str]], ...] = (_shop, _share, _work, _garden, _trip)


def _problem(seed: int, split: str, i: int) -> Scenario:
    r = random.Random(f"planner|{seed}|{split}|{i}")
    question, answer, plan = r.choice(TEMPLATES)(r)
    return Scenario(id=f"gen-{split}-{seed}-{i}", prompt=question, data={"answer": str(answer), "plan": plan})


def generate(count: int, seed: int, split: str = "train") -> list[Scenario]:
    """`count` problems; problem i of a split depends on (seed, split, i) only, so a larger count keeps the first
    ones and the held-out split never repeats a train problem's seed."""
    return [_problem(seed, split, i) for i in range(count)]


def held_out(count: int, seed: int, train: list[Scenario]) -> list[Scenario]:
    """`count` val problems of the generator, in order, skipping any whose text a train problem (or an earlier val
    one) has: two seeds may draw the same problem, and a held-out problem must be one the policy never saw."""
    seen, found, i = {s.prompt for s in train}, [], 0
    while len(found) < count:
        problem, i = _problem(seed, "val", i), i + 1
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            found.append(problem)
    return found


def write_demos(out: Path, count: int, seed: int) -> list[dict[str, Any]]:
    """SFT demonstrations (OpenAI-messages JSONL, as `--sft-data` reads): each generated train problem with the plan
    its template knows, so a base model that answers in prose learns the JSON format before GRPO."""
    from envs.planner.plan import PLANNER_SYSTEM_PROMPT

    demos = [{"messages": [{"role": "system", "content": PLANNER_SYSTEM_PROMPT},
                           {"role": "user", "content": s.prompt},
                           {"role": "assistant", "content": s.data["plan"]}],
              "metadata": {"env": "planner", "scenario_id": s.id}} for s in generate(count, seed)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # no half-written file if this fails
    tmp.write_text("".join(json.dumps(d) + "\n" for d in demos))
    tmp.replace(out)
    return demos


def _scenario(sid: str, question: str, answer: str) -> Scenario:
    return Scenario(id=sid, prompt=question, data={"answer": answer})


def clean_answer(answer: Any) -> str | None:
    """GSM8K's `... #### 1,234` -> '1234'; a bare number as is; None when no number can be read."""
    from envs.planner.reward import final_number

    text = str(answer)
    value = final_number(text.split("####")[-1])
    if value is None:
        return None
    return str(int(value)) if value == int(value) else str(value)


def rows_to_scenarios(rows: list[Any], source: str) -> list[Scenario]:
    scenarios = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DatasetError(f"{source}: row {number}: not an object with question and answer")
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(f"{source}: row {number}: field 'question' must be a non-empty string")
        answer = clean_answer(row.get("answer")) if row.get("answer") is not None else None
        if answer is None:
            raise DatasetError(f"{source}: row {number}: field 'answer' has no number")
        scenarios.append(_scenario(str(row.get("id", f"row-{number}")), question.strip(), answer))
    if not scenarios:
        raise DatasetError(f"{source}: no rows")
    return scenarios


def read_file(path: Path) -> list[Any]:
    if not path.is_file():
        raise DatasetError(f"--dataset: no file at {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix != ".jsonl":
        raise DatasetError(f"--dataset: {path} must be .jsonl or .parquet")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: row {number}: not JSON ({exc.msg})") from None
    return rows


def load_gsm8k(split: str) -> list[Scenario]:
    """GSM8K from the hub (`openai/gsm8k`, config `main`); unreachable -> one line, before any work."""
    try:
        from datasets import load_dataset

        rows = list(load_dataset("openai/gsm8k", "main", split=split))
    except Exception as exc:  # offline, hub errors: all the same to the user
        from envs.r2e.data import hub_problem

        raise DatasetError(f"--dataset gsm8k: the hub is not reachable: {hub_problem(exc)}; or give --dataset FILE "
                           "(.jsonl/.parquet with question, answer) or leave --dataset out for the bundled "
                           "generator") from None
    return rows_to_scenarios(rows, f"gsm8k/{split}")


def scenarios_for(cfg: Any, split: str = "train") -> list[Scenario]:
    """A run's problems (`split` train or val) from its config; light: the spec and `tasks` call it without art."""
    from envs.options import options_for
    from envs.planner.options import PlannerOptions

    scenarios = load(cfg.dataset, options_for(cfg, PlannerOptions).num_problems, cfg.seed, split)
    return scenarios[: cfg.dataset_size] if cfg.dataset_size and split == "train" else scenarios


def load(dataset: str | None, count: int, seed: int, split: str = "train") -> list[Scenario]:
    """The train problems, or (`split='val'`) the held-out ones: for the generator a third as many (21 for the
    default 64, enough to see a change; at least one), for a file its last eighth (at least one)."""
    if dataset is None:
        train = generate(count, seed)
        return train if split == "train" else held_out(max(1, count // 3), seed, train)
    if dataset == GSM8K:
        return load_gsm8k("train" if split == "train" else "test")
    from envs.verl_layout import is_verl, val_file

    if is_verl(dataset):  # one file, one split, as verl keeps them
        return verl_scenarios(Path(dataset) if split == "train" else val_file(Path(dataset)))
    scenarios = rows_to_scenarios(read_file(Path(dataset)), dataset)
    held = max(1, len(scenarios) // 8) if len(scenarios) > 1 else 0
    if split == "train":
        return scenarios[: len(scenarios) - held] if held else scenarios
    return scenarios[len(scenarios) - held:] if held else scenarios


# ---- verl's layout -----------------------------------------------------------------------------------------------


def verl_rows(items: list[tuple[Scenario, str]], out: Path, cfg: Any = None) -> list[dict[str, Any]]:
    """The problems as verl rows: the planner's two messages, the exact answer as the ground truth, the question
    (and a generated problem's plan) in `extra_info`."""
    from envs.planner.plan import PLANNER_SYSTEM_PROMPT
    from envs.verl_layout import row

    rows = []
    for index, (scenario, split) in enumerate(items):
        extra = {"env": "planner", "task_id": scenario.id, "index": index, "split": split,
                 "question": scenario.prompt}
        if scenario.data.get("plan"):
            extra["plan"] = scenario.data["plan"]
        rows.append(row("planner", [{"role": "system", "content": PLANNER_SYSTEM_PROMPT},
                                    {"role": "user", "content": scenario.prompt}], "math",
                        scenario.data["answer"], extra))
    return rows


def verl_scenarios(path: Path) -> list[Scenario]:
    """A verl file's problems, each checked: the answer is the number in the ground truth (GSM8K's `#### 42` form
    and a one-item list, as verl's own GSM8K file holds, both read)."""
    from envs.verl_layout import read

    scenarios = []
    for row in read(path):
        truth = row.ground_truth
        if isinstance(truth, list) and len(truth) == 1:
            truth = truth[0]
        answer = clean_answer(truth) if isinstance(truth, str | int | float) else None
        if answer is None:
            raise row.fail("reward_model.ground_truth", f"has no number, got {str(truth)[:60]!r}")
        question = row.text("question") or row.user_text()
        data: dict[str, Any] = {"answer": answer}
        if plan := row.text("plan"):
            data["plan"] = plan
        scenarios.append(Scenario(id=row.task_id("planner"), prompt=question.strip(), data=data))
    return scenarios
