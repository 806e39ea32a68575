"""Resume bookkeeping (cursor, rollback of uncommitted work) and the health monitor, without a model."""

import json
import os
import subprocess
import sys
import time

from rollouts.health import HealthLimits, HealthMonitor
from train import Cursor, rollback_uncommitted


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
