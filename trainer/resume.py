"""Resume: the data cursor, and rolling back whatever a killed run wrote past its last committed step.

`state.json` (written last in each step, atomically) is the only commit point. On start, whatever a killed run
left beyond the committed step (a newer checkpoint, history rows, trajectory files) is removed, so each step is
trained, logged and counted exactly once, and the data cursor carries on.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, ExperimentConfig


@dataclass
class Cursor:
    """Where in the scenario order the next step starts; epochs reshuffle with a seed of their own."""

    epoch: int = 0
    position: int = 0

    def take(self, scenarios: list[Any], count: int, seed: int) -> tuple[list[Any], Cursor]:
        if self.position + count > len(scenarios):  # a short tail would make an uneven step: next epoch
            return Cursor(self.epoch + 1, 0).take(scenarios, count, seed)
        order = list(range(len(scenarios)))
        random.Random(f"{seed}:epoch:{self.epoch}").shuffle(order)
        chosen = [scenarios[i] for i in order[self.position : self.position + count]]
        return chosen, Cursor(self.epoch, self.position + count)


def rollback_uncommitted(model_dir: Path, committed_step: int) -> list[str]:
    """Remove what a killed run wrote past the committed step; returns what was removed, for the log."""
    removed: list[str] = []
    checkpoints = model_dir / "checkpoints"
    if checkpoints.is_dir():
        for entry in checkpoints.iterdir():
            if entry.name.startswith(".tmp-") or (entry.name.isdigit() and int(entry.name) > committed_step):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    history = model_dir / "history.jsonl"
    if history.exists():
        kept, dropped = [], 0
        for line in history.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                dropped += 1
                continue
            if int(row.get("step", 0)) <= committed_step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            tmp = history.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, history)
            removed.append(f"{history} ({dropped} rows)")
    for parquet in (model_dir / "trajectories").glob("*/*.parquet"):
        if parquet.stem.isdigit() and int(parquet.stem) > committed_step:
            parquet.unlink()
            removed.append(str(parquet))
    return removed


def check_resume(config: ExperimentConfig, state: dict[str, Any]) -> None:
    previous = state.get("config_hash")
    if previous and previous != config.config_hash() and not config.allow_config_change:
        changed = state.get("config", {})
        diffs = [k for k, v in config.hashed_fields().items() if k in changed and changed[k] != v]
        detail = f" (changed: {', '.join(diffs)})" if diffs else ""
        raise ConfigError(
            f"--allow-config-change: this run's config hash {config.config_hash()} differs from the saved "
            f"{previous}{detail}; use a new --experiment-name, or pass --allow-config-change to resume anyway"
        )


