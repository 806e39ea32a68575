"""`--max-steps-off-policy K`: the gate, staleness accounting and drop, the policy step every rollout records, the
flag's checks, and end to end: a pipelined run completes, and kill -9 at points where later steps are being gathered
loses, repeats and trains twice nothing (as tests/reliability/test_crash_resume.py does for the synchronous loop)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import art
import pytest

from tests.helpers import (
    history_rows,
    history_steps,
    kill_when,
    model_dir,
    read_state,
    run_train,
)
from trainer.cli import config_from_args
from trainer.config import ConfigError
from trainer.pipeline import PolicyClock, StepPipeline, check_staleness, versioned
from trainer.resume import Cursor

# ---- staleness: ART's rule -------------------------------------------------------------------------------------


def _group(*versions: int | None) -> art.TrajectoryGroup:
    return art.TrajectoryGroup([art.Trajectory(messages_and_choices=[], reward=float(i), initial_policy_version=v)
                                for i, v in enumerate(versions)])


def test_a_group_older_than_k_steps_is_dropped_and_counted():
    groups = [_group(4, 4), _group(3, 4), _group(2, 4), _group(4, 5)]  # oldest rollouts: 4, 3, 2, 4
    fresh = check_staleness(groups, trains_from=4, max_off_policy=1)
    assert fresh.kept == [groups[0], groups[1], groups[3]]  # a group is as old as its oldest rollout
    assert fresh.dropped == 1
    metrics = fresh.metrics()
    assert metrics["stale_groups_dropped"] == 1.0
    assert metrics["off_policy_steps_max"] == 2.0  # the dropped group's data counts in the distances it had
    assert metrics["off_policy_steps_mean"] == pytest.approx((0 + 0 + 1 + 0 + 2 + 0 + 0 - 1) / 8)


def test_synchronous_steps_drop_nothing_and_are_on_policy():
    groups = [_group(7, 7), _group(7, 7)]
    fresh = check_staleness(groups, trains_from=7, max_off_policy=0)
    assert fresh.kept == groups and fresh.metrics() == {"stale_groups_dropped": 0.0, "off_policy_steps_mean": 0.0,
                                                        "off_policy_steps_max": 0.0}
    assert check_staleness([_group(6, 7)], trains_from=7, max_off_policy=0).dropped == 1


def test_trajectories_without_a_policy_step_count_as_current():
    fresh = check_staleness([_group(None, None)], trains_from=9, max_off_policy=0)
    assert fresh.dropped == 0 and fresh.metrics()["off_policy_steps_max"] == 0.0


async def test_a_rollout_records_the_policy_it_started_and_ended_under():
    clock = PolicyClock(3)
    release = asyncio.Event()

    async def rollout(ctx, scenario):
        await release.wait()
        return art.Trajectory(messages_and_choices=[], reward=0.0)

    running = asyncio.create_task(versioned(rollout, clock)(None, None))
    await asyncio.sleep(0)
    clock.step = 4  # a step trains while the rollout runs
    release.set()
    trajectory = await running
    assert (trajectory.initial_policy_version, trajectory.final_policy_version) == (3, 4)
    assert trajectory.metadata["policy_step"] == 3


# ---- the gate ---------------------------------------------------------------------------------------------------


def _pipeline(max_off_policy: int, started: list[int], *, committed: int = 0, last_step: int = 100,
              scenarios: int = 8, epochs: int = 1) -> StepPipeline:
    async def gather(step, batch):
        started.append(step)
        await asyncio.sleep(3600)  # never finishes on its own

    return StepPipeline(Cursor(), lambda c: c.take(list(range(scenarios)), 2, 0), gather, committed=committed,
                        last_step=last_step, num_epochs=epochs, max_off_policy=max_off_policy)


async def test_synchronous_gate_starts_the_next_gather_only_after_a_commit():
    started: list[int] = []
    pipeline = _pipeline(0, started)
    pipeline.open_gates(0)
    await asyncio.sleep(0.01)
    assert started == [1]
    first = pipeline.next()
    pipeline.open_gates(1)
    await asyncio.sleep(0.01)
    assert started == [1, 2] and first.step == 1
    await pipeline.close()
    first.task.cancel()
    await asyncio.gather(first.task, return_exceptions=True)


async def test_k_steps_ahead_are_gathered_at_once_and_each_commit_opens_one_more():
    started: list[int] = []
    pipeline = _pipeline(2, started, committed=5, scenarios=20)
    pipeline.open_gates(5)
    await asyncio.sleep(0.01)
    assert started == [6, 7, 8]  # step 8 trains from policy 7, so policy 5 is within K=2 of it
    assert [p.step for p in pipeline.ahead] == [6, 7, 8]
    pipeline.open_gates(5)  # nothing new until a commit
    pipeline.open_gates(6)
    await asyncio.sleep(0.01)
    assert started == [6, 7, 8, 9]
    tasks = [p.task for p in pipeline.ahead]
    await pipeline.close()
    assert all(t.cancelled() for t in tasks) and not pipeline.ahead  # a stopped run discards what it gathered ahead


async def test_planning_stops_at_the_last_step_and_at_the_end_of_the_epochs():
    started: list[int] = []
    limited = _pipeline(3, started, last_step=2)
    limited.open_gates(0)
    assert [p.step for p in limited.ahead] == [1, 2] and not limited.epochs_done
    await limited.close()
    ended = _pipeline(3, started, scenarios=4)  # two steps per epoch, one epoch
    ended.open_gates(0)
    assert [p.step for p in ended.ahead] == [1, 2] and ended.epochs_done
    assert [p.next_cursor for p in ended.ahead] == [Cursor(0, 2), Cursor(0, 4)]  # what each step commits
    await ended.close()


# ---- the CPU backend serves while a step lands ----------------------------------------------------------------


async def test_the_cpu_endpoint_answers_a_request_named_for_the_step_just_before(tmp_path):
    """A rollout that named `m@0` while step 1's checkpoint was being written reaches the server after it."""
    import httpx

    from backends.cpu import CPUBackend, CPUBackendSettings
    from backends.policy import LoraSettings
    from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model

    settings = CPUBackendSettings(lora=LoraSettings(target_modules=LORA_TARGETS))
    backend = CPUBackend(path=str(tmp_path), settings=settings)
    model = art.TrainableModel(name="m", project="p", base_model=ensure_tiny_model(tmp_path / "base"),
                               base_path=str(tmp_path))
    try:
        await model.register(backend)
        await backend.train(model, [], learning_rate=1e-2)  # step 1 lands
        assert model.get_inference_name() == "m@1"
        async with httpx.AsyncClient(timeout=60) as client:
            async def status(name: str) -> int:
                body = {"model": name, "messages": [{"role": "user", "content": "a"}], "max_tokens": 2}
                reply = await client.post(f"{model.inference_base_url}/chat/completions", json=body,
                                          headers={"Authorization": f"Bearer {model.inference_api_key}"})
                return reply.status_code

            assert [await status(n) for n in ("m@1", "m@0", "m@2", "m@7")] == [200, 200, 404, 404]
    finally:
        await backend.close()


# ---- the flag ---------------------------------------------------------------------------------------------------


def test_the_flag_is_checked_and_hashed_only_when_set():
    with pytest.raises(ConfigError, match=r"^--max-steps-off-policy must be 0 \(synchronous\) or more$"):
        config_from_args(["--experiment-name", "x", "--env", "toy", "--max-steps-off-policy", "-1"])
    plain = config_from_args(["--experiment-name", "x", "--env", "toy"])
    assert "max_steps_off_policy" not in plain.hashed_fields()  # synchronous runs keep the hash they had
    pipelined = config_from_args(["--experiment-name", "x", "--env", "toy", "--max-steps-off-policy", "2"])
    assert pipelined.max_steps_off_policy == 2 and pipelined.config_hash() != plain.config_hash()


def test_a_backend_that_pauses_inference_while_training_is_refused():
    with pytest.raises(ConfigError, match=r"^--max-steps-off-policy 1: --backend local .*pauses inference"):
        config_from_args(["--experiment-name", "x", "--env", "toy", "--backend", "local",
                          "--max-steps-off-policy", "1"])
    config_from_args(["--experiment-name", "x", "--env", "toy", "--backend", "cpu", "--max-steps-off-policy", "1"])


def test_a_negative_k_is_one_line_and_exit_code_2_before_any_work(tmp_path):
    done = run_train(tmp_path, "bad", "--env", "toy", "--max-steps-off-policy", "-1", timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --max-steps-off-policy must be 0 (synchronous) or more"]
    assert not (tmp_path / "art-agent-trainer").exists()


# ---- end to end -------------------------------------------------------------------------------------------------

FLAGS = ["--env", "toy", "--groups-per-step", "2", "--rollouts-per-group", "4", "--dataset-size", "8",
         "--log-sample-rate", "1", "--max-steps-off-policy", "1"]


def _logged(logs: Path) -> dict[int, list[dict]]:
    """Each logged rollout's metadata, by step."""
    by_step: dict[int, list[dict]] = {}
    for path in sorted(logs.glob("step_*/*.jsonl")):
        meta = json.loads(path.read_text().splitlines()[0])["environment_kwargs"]
        by_step.setdefault(meta["step"], []).append(meta)
    return by_step


@pytest.mark.slow
def test_a_pipelined_run_trains_three_steps_each_within_k_of_its_policy(tmp_path):
    done = run_train(tmp_path, "pipe", *FLAGS, "--max-training-steps", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert history_steps(tmp_path, "pipe") == [1, 2, 3]
    assert read_state(tmp_path, "pipe")["cursor"] == {"epoch": 0, "position": 6}
    rows = {row["step"]: row for row in history_rows(tmp_path, "pipe")}
    assert rows[1]["train/off_policy_steps_max"] == 0.0  # nothing trained before step 1: on-policy
    assert rows[2]["train/off_policy_steps_max"] == 1.0  # gathered beside step 1, from policy 0, trained from 1
    assert all(rows[s]["train/stale_groups_dropped"] == 0.0 for s in rows)
    logged = _logged(tmp_path / "logs" / "pipe")
    assert sorted(logged) == [1, 2, 3] and all(len(metas) == 8 for metas in logged.values())
    for step, metas in logged.items():  # every rollout says which policy sampled it, never more than K behind
        assert all(0 <= (step - 1) - m["policy_step"] <= 1 for m in metas), (step, metas)
    assert {m["policy_step"] for m in logged[2]} == {0}
    from rollouts.logs import validate_file

    assert all(validate_file(p) is None for p in (tmp_path / "logs" / "pipe").glob("step_*/*.jsonl"))
    import pandas as pd

    parquet = pd.read_parquet(model_dir(tmp_path, "pipe") / "trajectories" / "train" / "0002.parquet")
    assert {json.loads(m)["policy_step"] for m in parquet["metadata"]} == {0}  # the trajectory itself records it
    report = (tmp_path / "logs" / "pipe" / "report.html").read_text()
    assert "policy step 0" in report


def _committed(art_path: Path) -> int:
    path = model_dir(art_path, "crash") / "state.json"
    return json.loads(path.read_text()).get("step", 0) if path.exists() else 0


def _kill_when(art_path: Path, ready, jitter_s: float, flags: list[str]) -> dict:
    """Start the trainer; once it started its steps and `ready()` holds, wait `jitter_s`, then kill -9."""
    killed = kill_when(art_path, "crash", flags, ready, jitter_s, start_wait=180, ready_wait=120)
    return killed | {"committed_after": _committed(art_path)}


@pytest.mark.slow
def test_kill_9_while_later_steps_are_gathered_loses_repeats_and_retrains_nothing(tmp_path, record_property):
    target = 4  # one epoch: 8 scenarios, 2 a step
    flags = [*FLAGS, "--max-training-steps", str(target)]
    root = model_dir(tmp_path, "crash")
    checkpoint = lambda step: (root / "checkpoints" / f"{step:04d}").is_dir  # noqa: E731
    step_logs = lambda step: (tmp_path / "logs" / "crash" / f"step_{step:04d}").is_dir  # noqa: E731
    kills = [
        _kill_when(tmp_path, checkpoint(1), 0.0, flags),  # step 1 trained, not committed; step 2 being gathered
        _kill_when(tmp_path, step_logs(2), 0.001, flags),  # around step 2's commit; step 3 being gathered
        _kill_when(tmp_path, checkpoint(3), 0.02, flags),  # step 3 trained; step 4 gathered ahead
    ]
    record_property("kills", json.dumps([{"committed_after": k["committed_after"],
                                          "resumed": [x for x in k["output"] if x.startswith(("start:", "resume:"))],
                                          "steps": [x for x in k["output"] if x.startswith("step ")]} for k in kills]))
    assert all(k["killed_alive"] for k in kills), [k["output"][-5:] for k in kills]
    done = run_train(tmp_path, "crash", *flags)
    assert done.returncode == 0, done.stderr[-3000:]

    assert history_steps(tmp_path, "crash") == list(range(1, target + 1))  # each step once, in order
    state = read_state(tmp_path, "crash")
    assert state["step"] == target and state["cursor"] == {"epoch": 0, "position": 8}
    assert sorted(p.name for p in (root / "trajectories" / "train").glob("*.parquet")) == [
        f"{s:04d}.parquet" for s in range(1, target + 1)]
    logged = _logged(tmp_path / "logs" / "crash")
    assert sorted(logged) == list(range(1, target + 1))
    per_step = {}
    for step, metas in logged.items():
        ids = Counter(m["scenario_id"] for m in metas)
        assert sorted(ids.values()) == [4, 4], (step, ids)  # two groups of four: no group trained twice
        per_step[step] = set(ids)
    everything = [s for ids in per_step.values() for s in ids]
    assert len(everything) == len(set(everything)) == 8, per_step  # no scenario twice within the epoch
    # What was gathered ahead before a kill is never trained: the first step after each resume is on-policy.
    rows = {row["step"]: row for row in history_rows(tmp_path, "crash")}
    resumed_at = [int(line.split("after step ")[1].split()[0]) for k in kills[1:] for line in k["output"]
                  if line.startswith("resume: starting after step")]
    resumed_at += [int(line.split("after step ")[1].split()[0]) for line in done.stdout.splitlines()
                   if line.startswith("resume: starting after step")]
    for committed in resumed_at:
        if committed < target:
            assert rows[committed + 1]["train/off_policy_steps_max"] == 0.0, (committed, rows[committed + 1])
    assert all(row["train/off_policy_steps_max"] <= 1.0 for row in rows.values())
