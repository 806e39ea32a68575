"""R2E rows + the repo cache -> scenarios; a row whose repository is not cached stops the run before it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.r2e.data import R2ERow
from rollouts.scenario import DatasetError, Scenario


def row_scenario(row: R2ERow, repo_path: str | None = None) -> Scenario:
    """A row as a scenario; it keeps the row's every field, so `row_of` gives the row back (verl export)."""
    data: dict[str, Any] = {"expected": row.expected_output_json, "test_cmd": row.test_cmd,
                            "docker_image": row.docker_image, "repo_name": row.repo_name,
                            "commit_hash": row.commit_hash}
    if repo_path is not None:
        data["repo_path"] = repo_path
    return Scenario(id=row.instance_id, prompt=row.problem_statement, data=data)


def row_of(scenario: Scenario) -> R2ERow:
    data = scenario.data
    return R2ERow(repo_name=data["repo_name"], docker_image=data["docker_image"], commit_hash=data["commit_hash"],
                  problem_statement=scenario.prompt, expected_output_json=data["expected"],
                  test_cmd=data["test_cmd"])


def scenarios_from_rows(rows: list[R2ERow], cache_dir: Path, index: dict[str, dict[str, Any]]) -> list[Scenario]:
    scenarios = []
    for number, row in enumerate(rows):
        if row.instance_id not in index:
            raise DatasetError(f"row {number} ({row.instance_id}): its repository is not in the cache {cache_dir}; "
                               "build it with `python -m envs.r2e cache`")
        scenarios.append(row_scenario(row, str(cache_dir / index[row.instance_id]["cache_path"])))
    return scenarios


def verl_rows(items: list[tuple[Scenario, str]], out: Path, cfg: Any) -> list[dict[str, Any]]:
    """The tasks in verl's layout (`python -m envs.r2e tasks`), the prompt as the run's `--system-prompt` shows it."""
    from envs.options import options_for
    from envs.r2e.data import verl_row
    from envs.r2e.options import R2EOptions

    system_prompt = options_for(cfg, R2EOptions).system_prompt
    return [verl_row(row_of(s), index, split, system_prompt) for index, (s, split) in enumerate(items)]


def task_scenarios(cfg: Any, split: str) -> list[tuple[Scenario, str]]:
    """The split's tasks as train.py loads them, without the repo cache a run needs (an export reads none)."""
    from envs.options import options_for
    from envs.r2e.options import R2EOptions

    if options_for(cfg, R2EOptions).r2e_tasks == "generated":
        from envs.r2e.generated import run_rows

        if cfg.dataset is not None:
            raise DatasetError("--r2e-tasks generated makes its own tasks: leave out --dataset")
        rows = run_rows(split)
    else:
        rows = task_rows(cfg.dataset, split, "train", bundled=cfg.dataset is None)
    if split == "train" and cfg.dataset_size:
        rows = rows[: cfg.dataset_size]
    return [(row_scenario(row), split) for row in rows]


# The bundled samples' split for "SFT on demonstrations of five tasks, GRPO on all six, report on the sixth":
# thermo's fix (two boundary comparisons) is the same kind of edit as the training samples' one-line fixes, so
# a model that learnt from their demonstrations has something to transfer, yet it never saw thermo solved.
HELDOUT_SAMPLE_REPOS = ("thermo",)
SAMPLE_SPLITS = ("train", "heldout", "all")


def check_split(split: str) -> str:
    """The split name, or a one-line DatasetError the CLI prints as is."""
    if split not in SAMPLE_SPLITS:
        raise DatasetError(f"--split {split!r}: choose from {', '.join(SAMPLE_SPLITS)}")
    return split


def sample_split_ids(split: str) -> list[str]:
    """Instance ids of the bundled samples in `split`: "heldout" (never demonstrated), "train" (the rest), "all"."""
    from envs.r2e.cache import sample_rows

    check_split(split)
    rows = sample_rows()
    heldout = {r.instance_id for r in rows if r.repo_name in HELDOUT_SAMPLE_REPOS}
    return [r.instance_id for r in rows if split == "all" or (r.instance_id in heldout) == (split == "heldout")]


def filter_split(scenarios: list[Scenario], split: str) -> list[Scenario]:
    """The scenarios of the samples' `split`, e.g. the held-out sample for evaluation after SFT on the others."""
    wanted = set(sample_split_ids(split))
    return [s for s in scenarios if s.id in wanted]


def task_rows(dataset: str | None, split: str, hub_split: str, bundled: bool) -> list[R2ERow]:
    """The rows a run trains (`split` train) or evaluates on (val): the bundled samples (both), else --dataset's
    rows for train and, for val, a verl file's val file beside it or the hub's dev_10pr_v1."""
    from envs.r2e.cache import sample_rows
    from envs.r2e.data import load_rows
    from envs.verl_layout import is_verl, val_file

    if bundled:
        return sample_rows()
    if split == "train":
        return load_rows(dataset, hub_split)
    if dataset is not None and is_verl(dataset):
        return load_rows(str(val_file(Path(dataset))))
    return load_rows(None, "dev_10pr_v1")


# ---- verl's layout: every R2E-Gym field in `extra_info`, the expected test statuses also the ground truth ----------
