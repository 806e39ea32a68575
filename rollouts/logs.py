"""Sampled trajectory logs in the RLM visualizer's JSONL format (`logs/<experiment>/step_NNNN/*.jsonl`).

One file per logged rollout: a metadata line (holding the rollout's turn count), then one iteration line per
assistant turn, also a turn whose reply held no code (`code_blocks: []`, with the `observation` the agent got).
Which rollouts are logged is a pure function of (seed, step, group, index), so a resumed step logs the same ones.
Each file is written to a temp name, fsynced and renamed (backends/atomic.py), off the event loop, so a killed run
never leaves half a file and a full disk raises `DiskFull` naming it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import art

from backends.atomic import atomic_write_jsonl


def is_sampled(seed: int, step: int, group: int, index: int, rate: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{step}:{group}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


TURNS_KEY = "rlm_turns"


def attach_turns(trajectory: art.Trajectory, turns: list[dict[str, Any]]) -> None:
    """Rollouts that run code keep each turn's code blocks and results here, for `rlm_lines` to write out.

    Trajectory metadata holds scalars only (ART stores it in parquet), so the turns travel as one JSON string.
    """
    trajectory.metadata[TURNS_KEY] = json.dumps(turns, default=repr)


def code_block(code: str, stdout: str = "", stderr: str = "", local_vars: dict[str, str] | None = None,
               execution_time: float = 0.0, calls: list[dict[str, Any]] | None = None,
               model: str = "") -> dict[str, Any]:
    """One code block and its result in the RLM visualizer's shape."""
    rlm_calls = [{
        "root_model": model, "prompt": c["prompt"], "response": c["response"],
        "usage_summary": {"model_usage_summaries": {model: {"total_calls": 1, "total_input_tokens": 0,
                                                            "total_output_tokens": 0}}},
        "execution_time": float(c.get("execution_time", 0.0)),
    } for c in calls or []]
    return {"code": code, "result": {"stdout": stdout, "stderr": stderr, "locals": dict(local_vars or {}),
                                     "execution_time": float(execution_time), "rlm_calls": rlm_calls}}


def count_turns(trajectory: art.Trajectory) -> int:
    """The model's replies in the conversation: the log owes one iteration line to each, code or not."""
    return sum(1 for item in trajectory.messages_and_choices
               if not isinstance(item, dict) or item.get("role") == "assistant")


def rlm_lines(trajectory: art.Trajectory, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The metadata line (with the rollout's turn count, so a validator can tell a short log) and one iteration
    line per turn: the env's own record where it kept one, else one per reply read off the conversation."""
    now = datetime.now(UTC).isoformat()
    head = _metadata_line(now, meta, count_turns(trajectory))
    if TURNS_KEY in trajectory.metadata:
        return [head] + [
            {"type": "iteration", "iteration": i, "timestamp": now, "observation": None, **turn}
            for i, turn in enumerate(json.loads(str(trajectory.metadata[TURNS_KEY])), 1)
        ]
    lines: list[dict[str, Any]] = [head]
    history: list[dict[str, Any]] = []
    for item in trajectory.messages_and_choices:
        if isinstance(item, dict) and item.get("role") != "assistant":
            history.append({"role": item.get("role"), "content": item.get("content")})
            if len(lines) > 1:  # what the environment said back after the last reply
                seen = lines[-1]["observation"]
                lines[-1]["observation"] = f"{seen}\n{item.get('content')}" if seen else str(item.get("content"))
            continue
        response = (item.get("content") if isinstance(item, dict) else item.message.content) or ""
        lines.append({
            "type": "iteration", "iteration": len(lines), "timestamp": now, "prompt": list(history),
            "response": response, "code_blocks": [], "final_answer": None, "iteration_time": 0.0,
            "observation": None,
        })
        history.append({"role": "assistant", "content": response})
    if len(lines) > 1:
        lines[-1]["final_answer"] = lines[-1]["response"]
    return lines


def _metadata_line(now: str, meta: dict[str, Any], turns: int) -> dict[str, Any]:
    return {"type": "metadata", "timestamp": now, "root_model": meta.get("model", ""), "max_depth": 1,
            "max_iterations": meta.get("max_steps", 1), "backend": "openai", "backend_kwargs": {},
            "environment_type": meta.get("env", ""), "environment_kwargs": meta, "other_backends": None,
            "turns": turns}


def _write_atomic(path: Path, lines: list[dict[str, Any]]) -> None:
    atomic_write_jsonl(path, lines, default=repr)


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
                     "policy_step": trajectory.initial_policy_version,  # the policy that sampled it (None: unknown)
                     "reward_breakdown": dict(trajectory.metrics),
                     "logs": trajectory.logs[-20:]}
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


# ---- validation: `python -m rollouts.logs validate PATH...` -------------------------------------------------------

_METADATA_KEYS = {"timestamp": str, "root_model": str, "max_depth": int, "max_iterations": int, "backend": str,
                  "backend_kwargs": dict, "environment_type": str, "environment_kwargs": dict}
_ITERATION_KEYS = {"iteration": int, "timestamp": str, "response": str, "code_blocks": list,
                   "iteration_time": (int, float)}
_RESULT_KEYS = {"stdout": str, "stderr": str, "locals": dict, "execution_time": (int, float), "rlm_calls": list}


def _check(obj: dict[str, Any], keys: dict[str, Any], where: str) -> str | None:
    for key, kind in keys.items():
        if key not in obj:
            return f"{where}: missing '{key}'"
        if not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            return f"{where}: '{key}' has type {type(obj[key]).__name__}"
    return None


def validate_file(path: Path) -> str | None:
    """None when the file is what the RLM visualizer reads and holds every turn of its rollout, else
    'LINE: reason' for the first problem: a log that drops turns is as useless to a reader as a broken one."""
    lines = path.read_text(errors="replace").splitlines()
    if not lines:
        return "1: empty file"
    expected_iteration = 1
    turns = 0
    for number, text in enumerate(lines, 1):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"{number}: not JSON ({exc.msg})"
        if not isinstance(obj, dict):
            return f"{number}: not a JSON object"
        kind = obj.get("type")
        if number == 1:
            if kind != "metadata":
                return f"1: first line must have type 'metadata', has {kind!r}"
            problem = _check(obj, _METADATA_KEYS, "1")
            if problem or "other_backends" not in obj:
                return problem or "1: missing 'other_backends'"
            turns = obj.get("turns")
            if not isinstance(turns, int) or isinstance(turns, bool) or turns < 1:
                return f"1: 'turns' must be the rollout's turn count (an integer >= 1), is {turns!r}"
        elif kind == "run_context" and number == 2:
            continue
        elif kind == "iteration":
            problem = _check_iteration(obj, number, expected_iteration)
            if problem:
                return problem
            expected_iteration += 1
        else:
            return f"{number}: unexpected line type {kind!r}"
    iterations = expected_iteration - 1
    if iterations == 0:
        return f"{len(lines)}: no iteration lines (the rollout had {turns} turn(s))"
    if iterations != turns:
        return f"{len(lines)}: {iterations} iteration line(s) for a rollout of {turns} turn(s)"
    return None


def _check_iteration(obj: dict[str, Any], number: int, expected: int) -> str | None:
    problem = _check(obj, _ITERATION_KEYS, str(number))
    if problem:
        return problem
    if "prompt" not in obj or "final_answer" not in obj:
        return f"{number}: missing 'prompt' or 'final_answer'"
    if obj["iteration"] != expected:
        return f"{number}: iteration {obj['iteration']}, expected {expected}"
    if not isinstance(obj.get("observation"), str | None):
        return f"{number}: 'observation' must be a string or null"
    for b, block in enumerate(obj["code_blocks"]):
        if not isinstance(block, dict) or not isinstance(block.get("code"), str):
            return f"{number}: code_blocks[{b}] needs a 'code' string"
        problem = _check(block.get("result") or {}, _RESULT_KEYS, f"{number}: code_blocks[{b}].result")
        if problem:
            return problem
    return None


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rollouts.logs", description="check trajectory logs")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check files (or every .jsonl under folders) against the RLM format")
    check.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    files = sorted({f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*.jsonl"))})
    bad = 0
    for path in files:
        problem = validate_file(path)
        if problem:
            bad += 1
            print(f"{path}:{problem}")
    print(f"{len(files) - bad} of {len(files)} file(s) valid")
    return 1 if bad or not files else 0


if __name__ == "__main__":
    raise SystemExit(main())
