"""Sampled trajectory logs in the RLM visualizer's JSONL format (`logs/<experiment>/step_NNNN/*.jsonl`).

One file per logged rollout: a metadata line, then one iteration line per assistant turn. Which rollouts are
logged is a pure function of (seed, step, group, index), so a resumed step logs the same ones. Each file is
written to a temp name and renamed, off the event loop, so a killed run never leaves half a file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import art


def is_sampled(seed: int, step: int, group: int, index: int, rate: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{step}:{group}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def rlm_lines(trajectory: art.Trajectory, meta: dict[str, Any]) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    lines: list[dict[str, Any]] = [{
        "type": "metadata", "timestamp": now, "root_model": meta.get("model", ""), "max_depth": 1,
        "max_iterations": meta.get("max_steps", 1), "backend": "openai", "backend_kwargs": {},
        "environment_type": meta.get("env", ""), "environment_kwargs": meta, "other_backends": None,
    }]
    history: list[dict[str, Any]] = []
    for item in trajectory.messages_and_choices:
        if isinstance(item, dict):
            history.append({"role": item.get("role"), "content": item.get("content")})
            continue
        response = item.message.content or ""
        lines.append({
            "type": "iteration", "iteration": len(lines), "timestamp": now, "prompt": list(history),
            "response": response, "code_blocks": [], "final_answer": None, "iteration_time": 0.0,
        })
        history.append({"role": "assistant", "content": response})
    if len(lines) > 1:
        lines[-1]["final_answer"] = lines[-1]["response"]
    return lines


def _write_atomic(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        for line in lines:
            f.write(json.dumps(line, default=repr) + "\n")
    os.replace(tmp, path)


async def write_step(log_dir: str, experiment: str, step: int, groups: list[art.TrajectoryGroup], *, seed: int,
                     rate: float, meta: dict[str, Any]) -> int:
    """Write the sampled rollouts of one step; returns how many files were written."""
    if rate <= 0:
        return 0
    step_dir = Path(log_dir) / experiment / f"step_{step:04d}"
    jobs = []
    for g, group in enumerate(groups):
        for i, trajectory in enumerate(group.trajectories):
            if not is_sampled(seed, step, g, i, rate):
                continue
            scenario = str(trajectory.metadata.get("scenario_id", f"g{g}"))
            extra = {**meta, "step": step, "scenario_id": scenario, "reward": trajectory.reward,
                     "reward_breakdown": dict(trajectory.metrics)}
            name = f"{meta.get('env', 'env')}_{scenario}_{uuid.uuid4().hex[:8]}.jsonl"
            jobs.append((step_dir / name, rlm_lines(trajectory, extra)))
    if jobs:
        shutil.rmtree(step_dir, ignore_errors=True)  # a retried step replaces, never adds to, its logs
    await asyncio.gather(*(asyncio.to_thread(_write_atomic, path, lines) for path, lines in jobs))
    return len(jobs)


def remove_steps_after(log_dir: str, experiment: str, committed_step: int) -> list[str]:
    """Resume: logs of steps past the committed one belong to work that is being redone."""
    removed = []
    root = Path(log_dir) / experiment
    for entry in root.glob("step_*") if root.is_dir() else []:
        number = entry.name.removeprefix("step_")
        if number.isdigit() and int(number) > committed_step:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return removed
