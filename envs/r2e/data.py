"""R2E-Gym rows: from the hub (`datasets.load_dataset`) when reachable, or from a local .jsonl/.parquet file, in
R2E-Gym's columns or in verl's layout (envs/verl_layout.py: the row's fields in `extra_info`).

Every row is validated before training starts; a bad row stops the run with a message naming it and its field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, field_validator

from rollouts.scenario import DatasetError

HUB_DATASET = "R2E-Gym/R2E-Gym-Lite"
SPLITS = ("train", "dev_10pr_v1", "dev_100pr_v1")
STATUSES = {"PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS"}


class R2ERow(BaseModel):
    repo_name: str
    docker_image: str
    commit_hash: str
    problem_statement: str
    expected_output_json: dict[str, str]
    test_cmd: str = "bash run_tests.sh"

    @field_validator("expected_output_json", mode="before")
    @classmethod
    def parse_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict) or not value:
            raise ValueError("must be a non-empty JSON object of test name -> status")
        bad = {k: v for k, v in value.items() if str(v).upper() not in STATUSES}
        if bad:
            raise ValueError(f"unknown status(es) {bad}")
        return {k: str(v).upper() for k, v in value.items()}

    @field_validator("repo_name", "docker_image", "problem_statement")
    @classmethod
    def not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("commit_hash")
    @classmethod
    def hash_like(cls, value: str) -> str:
        if len(value) < 12 or any(c not in "0123456789abcdef" for c in value.lower()):
            raise ValueError("must be a hex commit hash of at least 12 characters")
        return value

    @property
    def instance_id(self) -> str:
        return f"{self.repo_name}__{self.commit_hash[:12]}"


def validate_rows(raw_rows: list[dict[str, Any]], source: str, prefix: str = "") -> list[R2ERow]:
    """`prefix`: where the fields sit in the file (`extra_info.` for verl's layout), for the error line."""
    rows = []
    for index, raw in enumerate(raw_rows):
        if raw.get("test_cmd") is None:
            raw = {k: v for k, v in raw.items() if k != "test_cmd"}
        try:
            rows.append(R2ERow.model_validate(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "?"
            raise DatasetError(f"{source}, row {index}: field '{prefix}{field}': {first['msg']}") from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{source}, row {index}: field '{prefix}expected_output_json' is not JSON "
                               f"({exc})") from None
    return rows


def load_rows(dataset: str | None, split: str = "train") -> list[R2ERow]:
    """Rows from a local file when given, else from the hub (needs network and `datasets`)."""
    if dataset is not None:
        from envs.verl_layout import is_verl

        path = Path(dataset)
        if is_verl(path):
            return verl_rows_in(path)
        if path.suffix == ".jsonl":
            raw = []
            for number, line in enumerate(path.read_text().splitlines()):
                if line.strip():
                    try:
                        raw.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DatasetError(f"{path}, line {number + 1}: not JSON ({exc})") from None
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            raw = pq.read_table(path).to_pylist()
        else:
            raise DatasetError(f"--dataset {path}: expected a .jsonl or .parquet file")
        return validate_rows(raw, str(path))
    if split not in SPLITS:
        raise DatasetError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    try:
        import datasets

        hub = datasets.load_dataset(HUB_DATASET, split=split)
    except Exception as exc:  # offline, or the hub refused: say so, and how to work without it
        raise DatasetError(f"could not load {HUB_DATASET} split {split}: {hub_problem(exc)}; or pass --dataset "
                           "FILE.jsonl, or build the cache with --from-samples") from None
    return validate_rows([dict(r) for r in hub], f"{HUB_DATASET}:{split}")


OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_problem(exc: Exception) -> str:
    """Why the hub failed, in words: offline mode (which train.py turns on) is named with the way out, since
    the library's own error then only says it could not connect."""
    on = [v for v in OFFLINE_VARS if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
    if on:
        return (f"offline mode is on ({'=1, '.join(on)}=1; train.py sets HF_HUB_OFFLINE=1 unless you set it): "
                f"run with {'=0 '.join(on)}=0 to allow the hub")
    return f"{exc.__class__.__name__}, is the hub reachable?"


FIELDS = tuple(R2ERow.model_fields)


def verl_row(row: R2ERow, index: int, split: str, system_prompt: str) -> dict[str, Any]:
    from agent.prompts import R2E_SYSTEM_PROMPTS, r2e_task
    from envs.verl_layout import row as verl

    expected = json.dumps(row.expected_output_json, sort_keys=True)
    return verl(f"r2e/{row.repo_name}", [{"role": "system", "content": R2E_SYSTEM_PROMPTS[system_prompt]},
                                        {"role": "user", "content": r2e_task(row.problem_statement)}],
                "swe", expected, {"env": "r2e", "task_id": row.instance_id, "index": index, "split": split,
                                  **row.model_dump(exclude={"expected_output_json"}),
                                  "expected_output_json": expected})


def verl_rows_in(path: Path) -> list[R2ERow]:
    """A verl file's rows: R2E-Gym's fields from `extra_info` (the expected statuses from the ground truth when
    extra_info lacks them, the bug report from the last user message), checked as any other rows."""
    from envs.verl_layout import read

    raw = []
    for row in read(path):
        fields = {name: row.extra_info.get(name) for name in FIELDS}
        if fields["expected_output_json"] is None:
            fields["expected_output_json"] = row.ground_truth
        if fields["problem_statement"] is None:
            fields["problem_statement"] = row.user_text()
        raw.append(fields)
    return validate_rows(raw, f"--dataset {path}", prefix="extra_info.")
