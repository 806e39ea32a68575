"""R2E rows + the repo cache -> scenarios; a row whose repository is not cached stops the run before it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.r2e.data import R2ERow
from rollouts.scenario import DatasetError, Scenario


def scenarios_from_rows(rows: list[R2ERow], cache_dir: Path, index: dict[str, dict[str, Any]]) -> list[Scenario]:
    scenarios = []
    for number, row in enumerate(rows):
        if row.instance_id not in index:
            raise DatasetError(f"row {number} ({row.instance_id}): its repository is not in the cache {cache_dir}; "
                               "build it with `python -m envs.r2e cache`")
        scenarios.append(Scenario(id=row.instance_id, prompt=row.problem_statement, data={
            "repo_path": str(cache_dir / index[row.instance_id]["cache_path"]), "expected": row.expected_output_json,
            "test_cmd": row.test_cmd, "docker_image": row.docker_image,
        }))
    return scenarios


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
