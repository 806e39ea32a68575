"""kill -9 of the trainer at random points across three steps, restarting after each kill.

What must hold afterwards: every step is in `history.jsonl` exactly once and in order, the data cursor never hands
out a scenario twice within an epoch, and the logs hold whole files only (no `.tmp-` leftovers, all valid).
"""

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter

import pytest

from tests.helpers import ROOT, history_steps, model_dir, read_state, run_train, subprocess_env, train_cmd

TARGET = 3
KILLS = 5
FLAGS = ["--env", "toy", "--groups-per-step", "2", "--rollouts-per-group", "4", "--dataset-size", "8",
         "--log-sample-rate", "1", "--max-training-steps", str(TARGET)]


def _committed(art_path) -> int:
    path = model_dir(art_path, "crash") / "state.json"
    return json.loads(path.read_text()).get("step", 0) if path.exists() else 0


def _kill_once(art_path, after: tuple[str, ...], delay_s: float) -> dict:
    """Start the trainer, wait for a line starting with one of `after`, sleep `delay_s`, kill -9."""
    proc = subprocess.Popen(train_cmd(art_path, "crash", *FLAGS), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=subprocess_env(), cwd=ROOT)
    seen: list[str] = []
    marker = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            seen.append(line.rstrip())
            if line.startswith(after):
                marker.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert marker.wait(180), "\n".join(seen[-30:])
    time.sleep(delay_s)
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(10)
    return {"after": after[0].rstrip(":"), "delay_s": round(delay_s, 2), "finished_first": finished,
            "steps_printed": [line.split(":")[0] for line in seen if line.startswith("step ")],
            "committed_after": _committed(art_path)}


@pytest.mark.slow
def test_kill_9_at_five_random_points_loses_and_repeats_nothing(tmp_path, record_property):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261122")))
    # One kill in start-up (model registration, rollback), then four inside steps: each of the three at least once,
    # at a random moment of the step (gather, train, checkpoint, log writing or the state commit).
    kills = [_kill_once(tmp_path, ("backend:",), rng.uniform(0.0, 1.0))]
    for target in sorted([1, 2, 3, rng.randint(1, TARGET)]):
        target = max(target, _committed(tmp_path) + 1)
        previous = (f"step {target - 1}:",) if target - 1 > _committed(tmp_path) else ("start:", "resume: starting")
        kills.append(_kill_once(tmp_path, previous, rng.uniform(0.0, 0.4)) | {"in_step": target})
    record_property("kills", json.dumps(kills))
    assert sum(not k["finished_first"] for k in kills) == KILLS, kills
    assert _committed(tmp_path) < TARGET, kills  # the last kill fell inside the run, not after it was done
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
