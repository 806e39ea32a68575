"""Resume bookkeeping (cursor, rollback of uncommitted work, whose files are whose) and the health monitor, without
a model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor.health import HealthLimits, HealthMonitor, RunDir, remove_dead_runs
from tests.helpers import ROOT
from train import ConfigError, Cursor, ExperimentConfig, rollback_uncommitted
from trainer.resume import RUN_ID, claim_outputs


def test_cursor_visits_every_scenario_once_per_epoch_and_reshuffles():
    scenarios = list(range(10))
    cursor, seen = Cursor(), []
    for _ in range(5):
        batch, cursor = cursor.take(scenarios, 2, seed=3)
        seen += batch
    assert sorted(seen) == scenarios and cursor == Cursor(0, 10)
    next_epoch, cursor = cursor.take(scenarios, 2, seed=3)
    assert cursor == Cursor(1, 2)
    order0 = [b for c in [Cursor(0, i) for i in range(0, 10, 2)] for b in c.take(scenarios, 2, 3)[0]]
    order1 = [b for c in [Cursor(1, i) for i in range(0, 10, 2)] for b in c.take(scenarios, 2, 3)[0]]
    assert order0 != order1 and next_epoch == order1[:2]


def test_cursor_skips_a_short_tail_to_the_next_epoch():
    batch, cursor = Cursor(0, 8).take(list(range(10)), 3, seed=0)
    assert cursor == Cursor(1, 3) and len(batch) == 3


def test_rollback_removes_everything_past_the_committed_step(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for name in ("0000", "0001", "0002", "0003", ".tmp-0004-x"):
        (checkpoints / name).mkdir(parents=True)
    rows = [json.dumps({"step": s, "train/reward": 0.1}) for s in (1, 2, 3)]
    (tmp_path / "history.jsonl").write_text("\n".join(rows) + '\n{"step": 4, "tra')
    (tmp_path / "trajectories" / "train").mkdir(parents=True)
    for s in (1, 2, 3):
        (tmp_path / "trajectories" / "train" / f"{s:04d}.parquet").write_bytes(b"x")
    removed = rollback_uncommitted(tmp_path, committed_step=2)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["0000", "0001", "0002"]
    assert [json.loads(line)["step"] for line in (tmp_path / "history.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "trajectories" / "train").iterdir()) == ["0001.parquet", "0002.parquet"]
    assert len(removed) == 4  # two checkpoint dirs, the history rows, one parquet


def test_rollback_of_a_clean_run_removes_nothing(tmp_path):
    (tmp_path / "checkpoints" / "0001").mkdir(parents=True)
    (tmp_path / "history.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    assert rollback_uncommitted(tmp_path, committed_step=1) == []


def test_health_monitor_counts_children_and_removes_stale_dirs(tmp_path):
    stale, fresh = tmp_path / "old-rollout", tmp_path / "new-rollout"
    stale.mkdir()
    fresh.mkdir()
    (fresh / "blob").write_bytes(b"0" * 2_000_000)
    old = time.time() - 7200
    os.utime(stale, (old, old))
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(3)]
    try:
        monitor = HealthMonitor(tmp_path, HealthLimits(interval_s=0.1, max_child_processes=2, max_tmp_usage_gb=0.001))
        figures = monitor.check()
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert figures["child_processes"] >= 3
    assert figures["stale_dirs_removed"] == 1 and not stale.exists() and fresh.exists()
    assert figures["rollout_root_gb"] >= 0.002
    assert monitor.figures()["health/warnings"] == 3.0  # children, disk use, stale dir


def test_health_monitor_thread_runs_and_stops_cleanly(tmp_path):
    with HealthMonitor(tmp_path, HealthLimits(interval_s=0.05)) as monitor:
        time.sleep(0.3)
        assert "health/child_processes" in monitor.figures()
    assert not monitor._thread.is_alive()


# ---- whose rollout dirs, logs and checkpoints (a crash leaves nothing behind; nobody else's files are deleted) ----


def _hold_run_dir(root) -> tuple[subprocess.Popen, str]:
    """Another run on this machine: a process that claims a run folder under `root` and lives on."""
    code = ("import sys, time; from monitor.health import RunDir; d = RunDir.claim(sys.argv[1]); "
            "(d.path / 'task-1').mkdir(); print(d.path, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return proc, proc.stdout.readline().strip()


def test_dead_runs_rollout_dirs_go_and_live_runs_dirs_stay(tmp_path):
    dead, dead_dir = _hold_run_dir(tmp_path)
    live, live_dir = _hold_run_dir(tmp_path)
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert Path(dead_dir, "task-1").is_dir()  # kill -9: nothing of it ran to clean up
        mine = RunDir.claim(tmp_path)
        assert sorted(map(str, remove_dead_runs(tmp_path))) == [dead_dir]
        assert not Path(dead_dir).exists() and Path(live_dir, "task-1").is_dir() and mine.path.is_dir()
        mine.release()
        assert not mine.path.exists()
    finally:
        live.kill()
        live.wait()


def test_health_monitor_removes_a_dead_runs_dirs_at_once_and_keeps_a_live_ones(tmp_path):
    dead, dead_dir = _hold_run_dir(tmp_path)
    live, live_dir = _hold_run_dir(tmp_path)
    try:
        dead.kill()
        dead.wait()
        mine = RunDir.claim(tmp_path)
        (mine.path / "my-rollout").mkdir()
        figures = HealthMonitor(tmp_path, own=mine.path).check()
        assert figures["stale_dirs_removed"] == 1.0 and not Path(dead_dir).exists()
        assert Path(live_dir, "task-1").is_dir() and (mine.path / "my-rollout").is_dir()  # fresh: not stale
        old = time.time() - 7200
        os.utime(Path(live_dir, "task-1"), (old, old))
        os.utime(mine.path / "my-rollout", (old, old))
        HealthMonitor(tmp_path, own=mine.path).check()
        assert Path(live_dir, "task-1").is_dir()  # another live run's dir: never ours to judge, however old
        assert not (mine.path / "my-rollout").exists()  # a stale dir of this run's own: gone
        mine.release()
    finally:
        live.kill()
        live.wait()


def _config(tmp_path, name="exp") -> ExperimentConfig:
    return ExperimentConfig(experiment_name=name, env="toy", log_dir=str(tmp_path / "logs"),
                            art_path=str(tmp_path / "art"), base_model="tiny-random")


def _step_logs(root, *steps):
    for step in steps:
        (root / f"step_{step:04d}").mkdir(parents=True)
        (root / f"step_{step:04d}" / "r.jsonl").write_text("{}\n")


def test_resume_rolls_back_its_own_logs_past_the_commit_and_remembers_its_run_id(tmp_path):
    config, model_dir, saved = _config(tmp_path), tmp_path / "model", []
    run_id, removed = claim_outputs(config, model_dir, {}, saved.append)  # a fresh run claims the log folder
    assert saved == [run_id] and removed == []
    logs = tmp_path / "logs" / "exp"
    _step_logs(logs, 1, 2, 3)
    again, removed = claim_outputs(config, model_dir, {"step": 2, RUN_ID: run_id}, saved.append)
    assert again == run_id and saved == [run_id]
    assert removed == [str(logs / "step_0003")] and sorted(p.name for p in logs.glob("step_*")) == [
        "step_0001", "step_0002"]


def test_another_runs_logs_are_kept_and_the_clash_is_one_line(tmp_path):
    logs = tmp_path / "logs" / "exp"
    first, _ = claim_outputs(_config(tmp_path), tmp_path / "art-a", {}, lambda _id: None)  # another art path
    _step_logs(logs, 1, 2)
    with pytest.raises(ConfigError) as caught:
        claim_outputs(_config(tmp_path), tmp_path / "art-b", {}, lambda _id: None)  # a new run, same log folder
    message = str(caught.value)
    assert message.startswith("--log-dir") and "kept" in message and first in message and "\n" not in message
    assert sorted(p.name for p in logs.glob("step_*")) == ["step_0001", "step_0002"]
    unowned = tmp_path / "logs" / "legacy"
    _step_logs(unowned, 1)
    with pytest.raises(ConfigError, match="no owner file"):  # logs nobody claimed: not provably ours
        claim_outputs(_config(tmp_path, "legacy"), tmp_path / "art-c", {}, lambda _id: None)
    assert (unowned / "step_0001" / "r.jsonl").exists()


def test_checkpoints_no_state_accounts_for_are_kept(tmp_path):
    model_dir = tmp_path / "model"
    for name in ("0000", "0001", "0002"):
        (model_dir / "checkpoints" / name).mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"^--art-path: .*0001.* and 1 more past step 0.*kept"):
        claim_outputs(_config(tmp_path), model_dir, {}, lambda _id: None)  # state.json deleted or never ours
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["0000", "0001", "0002"]
    # A state from before run ids is this experiment's own: it is adopted, and what lies past its step goes.
    _step_logs(tmp_path / "logs" / "exp", 1, 2)
    saved = []
    _, removed = claim_outputs(_config(tmp_path), model_dir, {"step": 1}, saved.append)
    assert len(saved) == 1 and sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["0000", "0001"]
    assert [p.name for p in (tmp_path / "logs" / "exp").glob("step_*")] == ["step_0001"] and len(removed) == 2
