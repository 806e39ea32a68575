"""One run per experiment: a second run of a live experiment stops at once (one line naming the experiment and the
live run's pid, exit code 2) and touches nothing; the lock of a run killed with -9 never blocks its resume."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, model_dir, read_state, run_train, subprocess_env, train_cmd
from train import ConfigError
from trainer.resume import LOCK_FILE, ExperimentLock

TOY = ["--env", "toy", "--groups-per-step", "2", "--rollouts-per-group", "2", "--dataset-size", "8"]


def _holder(folder: Path) -> subprocess.Popen:
    code = ("import sys, time; from pathlib import Path; from trainer.resume import ExperimentLock; "
            "ExperimentLock.acquire(Path(sys.argv[1]), 'exp'); print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_held_lock_refuses_with_the_holders_pid_and_a_killed_holders_lock_is_free(tmp_path):
    folder = tmp_path / "models" / "exp"
    holder = _holder(folder)
    try:
        with pytest.raises(ConfigError) as caught:
            ExperimentLock.acquire(folder, "exp")
        message = str(caught.value)
        assert message.startswith("--experiment-name exp:") and f"pid {holder.pid}" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = ExperimentLock.acquire(folder, "exp")  # kill -9 dropped the flock: the stale file blocks nothing
    assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
    lock.release()


def test_a_run_that_stops_before_writing_anything_leaves_no_folder(tmp_path):
    folder = tmp_path / "art" / "project" / "models" / "exp"
    ExperimentLock.acquire(folder, "exp").release()
    assert not (tmp_path / "art").exists()
    lock = ExperimentLock.acquire(folder, "exp")
    (folder / "state.json").write_text("{}")  # work began: everything stays
    lock.release()
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE, "state.json"]


def test_a_second_run_stops_before_the_trainers_imports_naming_the_holder(tmp_path, record_property):
    holder = _holder(model_dir(tmp_path, "busy"))
    try:
        before = _files(tmp_path)
        t0 = time.monotonic()
        second = subprocess.run(train_cmd(tmp_path, "busy", *TOY), capture_output=True, text=True, timeout=60,
                                env=subprocess_env(), cwd=ROOT)
        record_property("exit_s", round(time.monotonic() - t0, 2))
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2 and second.stderr.strip() == (
        f"error: --experiment-name busy: another run (pid {holder.pid}) is training this experiment "
        f"({model_dir(tmp_path, 'busy') / LOCK_FILE} is locked); wait for it to end, or choose another "
        "--experiment-name")
    assert _files(tmp_path) == before and not (tmp_path / "logs").exists()


def _files(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under `roots` with its size and modification time: what "touches nothing" compares."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_second_run_of_a_live_experiment_exits_2_touching_nothing_and_kill_9_never_blocks_resume(
        tmp_path, record_property):
    first = subprocess.Popen(train_cmd(tmp_path, "solo", *TOY, "--max-training-steps", "50"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=subprocess_env(), cwd=ROOT)
    started = threading.Event()

    def read() -> None:
        for line in first.stdout:
            if line.startswith("step 1"):
                started.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert started.wait(300), "the first run never finished a step"
        first.send_signal(signal.SIGSTOP)  # frozen, so that any change to its files would be the second run's
        before = _files(tmp_path)
        t0 = time.monotonic()
        second = subprocess.run(train_cmd(tmp_path, "solo", *TOY, "--max-training-steps", "50"), capture_output=True,
                                text=True, timeout=120, env=subprocess_env(), cwd=ROOT)
        record_property("second_run_exit_s", round(time.monotonic() - t0, 2))
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --experiment-name solo:"), second.stderr
        assert f"pid {first.pid}" in lines[0] and "Traceback" not in second.stdout
        assert _files(tmp_path) == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (model_dir(tmp_path, "solo") / LOCK_FILE).read_text().strip() == str(first.pid)  # the stale lock
    committed = read_state(tmp_path, "solo")["step"]
    resumed = run_train(tmp_path, "solo", *TOY, "--max-training-steps", str(committed + 1))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume: starting after step {committed}" in resumed.stdout
