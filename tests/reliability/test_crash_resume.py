"""kill -9 of the trainer at five random points across three steps, restarting after each kill.

The points are drawn inside the phases where a kill could do harm: start-up (registration, rollback), the first
gather, between a step's checkpoint and its commit, from a step's first log file on (the writes take a few ms, so
this one often lands just after the commit; `committed_after` in the recorded kills says which), and around the
last step's commit. What must hold afterwards: every step is in `history.jsonl` exactly once and in order, the data
cursor never hands out a scenario twice within an epoch, checkpoints and logs hold whole entries only.
"""

import json
import os
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import history_steps, kill_when, model_dir, read_state, run_train

TARGET = 3
FLAGS = ["--env", "toy", "--groups-per-step", "2", "--rollouts-per-group", "4", "--dataset-size", "8",
         "--log-sample-rate", "1", "--max-training-steps", str(TARGET)]
STARTED = ("start:", "resume: starting")


def _committed(art_path: Path) -> int:
    path = model_dir(art_path, "crash") / "state.json"
    return json.loads(path.read_text()).get("step", 0) if path.exists() else 0


def _kill_once(art_path: Path, after: tuple[str, ...], ready: Callable[[], bool], jitter_s: float) -> dict:
    """Start the trainer; once it printed a line starting with `after` and `ready()` holds, wait `jitter_s`, kill."""
    killed = kill_when(art_path, "crash", FLAGS, ready, jitter_s, start_wait=180, ready_wait=120, after=after)
    return {"killed_alive": killed["killed_alive"], "jitter_s": round(jitter_s, 3),
            "steps_printed": [line.split(":")[0] for line in killed["output"] if line.startswith("step ")],
            "committed_after": _committed(art_path)}


@pytest.mark.slow
def test_kill_9_at_five_random_points_loses_and_repeats_nothing(tmp_path, record_property):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261122")))
    checkpoint = lambda step: (model_dir(tmp_path, "crash") / "checkpoints" / f"{step:04d}").is_dir  # noqa: E731
    step_logs = lambda step: (tmp_path / "logs" / "crash" / f"step_{step:04d}").is_dir  # noqa: E731
    points = [
        ("start-up", ("backend:",), lambda: True, rng.uniform(0.0, 0.8)),
        ("step 1: gather", STARTED, lambda: True, rng.uniform(0.0, 0.5)),
        ("step 1: checkpoint written, not committed", STARTED, checkpoint(1), rng.uniform(0.0, 0.02)),
        ("step 2: once its first log file appears", STARTED, step_logs(2), rng.uniform(0.0, 0.002)),
        ("step 3: around the commit", STARTED, checkpoint(3), rng.uniform(0.0, 0.05)),
    ]
    kills = []
    for where, after, ready, jitter in points:
        before = _committed(tmp_path)
        kills.append({"where": where, **_kill_once(tmp_path, after, ready, jitter), "committed_before_kill": before})
    record_property("kills", json.dumps(kills))
    assert all(k["killed_alive"] for k in kills), kills  # five real kills, none after the trainer had exited

    done = run_train(tmp_path, "crash", *FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]

    assert history_steps(tmp_path, "crash") == list(range(1, TARGET + 1))
    state = read_state(tmp_path, "crash")
    assert state["step"] == TARGET and state["cursor"] == {"epoch": 0, "position": 2 * TARGET}
    checkpoints = sorted(p.name for p in (model_dir(tmp_path, "crash") / "checkpoints").iterdir())
    assert checkpoints[-1] == f"{TARGET:04d}" and not any(name.startswith(".") for name in checkpoints)

    logs = tmp_path / "logs" / "crash"
    assert sorted(p.name for p in logs.glob("step_*")) == [f"step_{s:04d}" for s in range(1, TARGET + 1)]
    assert not [p for p in logs.rglob("*") if p.name.startswith(".tmp")]
    from rollouts.logs import validate_file

    per_step = {}
    for step_dir in sorted(logs.glob("step_*")):
        files = sorted(step_dir.glob("*.jsonl"))
        assert len(files) == 2 * 4, step_dir  # every rollout of the step, once
        assert all(validate_file(f) is None for f in files)
        ids = Counter(json.loads(f.read_text().splitlines()[0])["environment_kwargs"]["scenario_id"] for f in files)
        assert sorted(ids.values()) == [4, 4], ids  # two groups of four, two distinct scenarios
        per_step[step_dir.name] = set(ids)
    everything = [s for ids in per_step.values() for s in ids]
    assert len(everything) == len(set(everything)) == 2 * TARGET, per_step  # no scenario twice within the epoch


@pytest.mark.slow
def test_a_new_run_keeps_the_logs_another_run_left_and_says_so_in_one_line(tmp_path, record_property):
    """Same experiment name, another art path (another machine sharing the log dir): a new run used to delete the
    earlier run's step logs as "uncommitted"; now it stops before any work and keeps them."""
    logs = tmp_path / "shared-logs"
    flags = ["--log-dir", str(logs), "--max-training-steps", "1", *FLAGS[:-2]]
    first = run_train(tmp_path / "a", "crash", *flags)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {str(p): p.read_bytes() for p in logs.rglob("*") if p.is_file()}
    assert any("step_0001" in p for p in before)
    second = run_train(tmp_path / "b", "crash", *flags)
    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --log-dir: {logs / 'crash'} holds step logs"), lines
    assert "kept" in lines[0] and str(model_dir(tmp_path / "a", "crash").resolve()) in lines[0]
    record_property("message", lines[0])
    assert {str(p): p.read_bytes() for p in logs.rglob("*") if p.is_file()} == before
    assert not model_dir(tmp_path / "b", "crash").exists()  # it stopped before registering anything
