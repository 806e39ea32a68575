"""One evaluation's per-task results, kept as a file: `logs/<experiment>/eval/step_NNNN.json`.

Why a file of its own: `history.jsonl` holds one mean per evaluation, but an interval, a paired difference between
two evaluations and a per-task table need each task's reward, and the report needs a few of the evaluation's
rollouts to show what the policy answered on tasks it never trained on. Written atomically (backends/atomic.py),
one file per evaluated step, so a re-evaluation of a step replaces its own file and a resumed run keeps the
earlier ones (resume rolls back `step_*` folders only, never `eval/`). `art` is not imported: the report reads
these files without it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backends.atomic import atomic_write_json

EVAL_FOLDER = "eval"
RUN_ID = "run_id"  # the key of state.json that names a run, so figures of two runs sharing a log folder never mix


@dataclass
class EvalRollout:
    """One kept evaluation rollout: its task, its reward, and the conversation's last messages as text."""

    scenario: str
    reward: float
    text: str


@dataclass
class EvalRecord:
    """What `eval/step_NNNN.json` holds. `mean`, `ci_low` and `ci_high` are over tasks (None when no task
    scored); `rewards` maps each task id to the mean reward of its rollouts; `run_id` is state.json's, so figures of
    another run that shared the log folder are never compared with this one's."""

    step: int
    label: str
    rewards: dict[str, float]
    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    rollouts: list[EvalRollout] = field(default_factory=list)
    run_id: str | None = None

    def __post_init__(self) -> None:
        self.mean, self.ci_low, self.ci_high = (_number(v) for v in (self.mean, self.ci_low, self.ci_high))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalRecord:
        """Raises KeyError, TypeError or ValueError on a file that is not an eval record."""
        return cls(step=int(data["step"]), label=str(data["label"]),
                   rewards={str(k): float(v) for k, v in dict(data["rewards"]).items()},
                   mean=_number(data.get("mean")), ci_low=_number(data.get("ci_low")),
                   ci_high=_number(data.get("ci_high")),
                   rollouts=[EvalRollout(str(r["scenario"]), float(r["reward"]), str(r["text"]))
                             for r in data.get("rollouts") or []],
                   run_id=None if data.get("run_id") is None else str(data["run_id"]))


def _number(value: Any) -> float | None:
    """JSON has no NaN: a figure that could not be measured is stored as null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def record_path(log_root: Path, step: int) -> Path:
    return log_root / EVAL_FOLDER / f"step_{step:04d}.json"


def write_record(log_root: Path, record: EvalRecord) -> Path:
    """Atomically (over the step's earlier file, if any); `DiskFull` names the path when the disk is full."""
    path = record_path(log_root, record.step)
    atomic_write_json(path, record.to_json())
    return path


def _read(path: Path) -> EvalRecord | None:
    try:
        return EvalRecord.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ours(record: EvalRecord, run_id: str | None) -> bool:
    return run_id is None or record.run_id in (None, run_id)


def read_records(log_root: Path, run_id: str | None = None) -> dict[int, EvalRecord]:
    """Every eval file under `log_root`, by step; files that cannot be read are skipped (the report of an older or
    damaged run still draws). With `run_id`, records of another run are left out (records without one are kept)."""
    found = (_read(path) for path in sorted((log_root / EVAL_FOLDER).glob("step_*.json")))
    return {record.step: record for record in found if record is not None and _ours(record, run_id)}


def previous_record(log_root: Path, step: int, run_id: str | None = None) -> EvalRecord | None:
    """This run's latest evaluation before `step`, the one a new evaluation is compared with; None if none. Reads
    from the newest file back, so a long run with --eval-every 1 does not read all of them each time."""
    steps = sorted((int(p.stem.removeprefix("step_")), p) for p in (log_root / EVAL_FOLDER).glob("step_*.json")
                   if p.stem.removeprefix("step_").isdigit())
    for at, path in reversed(steps):
        if at < step and (record := _read(path)) is not None and record.step < step and _ours(record, run_id):
            return record
    return None
