"""R2E rows + the repo cache -> scenarios; a row whose repository is not cached stops the run before it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.r2e.data import R2ERow
from envs.scenario import DatasetError, Scenario


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
