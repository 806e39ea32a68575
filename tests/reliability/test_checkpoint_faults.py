"""Damaged checkpoints, a full disk and SIGTERM: each ends in one line, never a traceback, and the rerun completes
with every step in history exactly once and the data cursor where an undisturbed run leaves it.

One 3-step run of the toy env on the tiny model is trained once and copied for each case. Its target character
('<') gives steps with a reward spread, so it keeps checkpoints 0001..0003 (a step with nothing to learn renames
the previous checkpoint instead, backends/cpu.py). The full disk is a real one: a small tmpfs, which needs root
and `mount`; elsewhere those cases are skipped.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.helpers import ROOT, history_steps, model_dir, read_state, run_train, subprocess_env, train_cmd

NAME = "faults"
FLAGS = ["--env", "toy", "--toy-target", "<", "--groups-per-step", "2", "--rollouts-per-group", "4",
         "--dataset-size", "8", "--log-sample-rate", "1"]
# Where an undisturbed run's cursor is after N steps (4 steps an epoch: 8 scenarios, 2 a step).
CURSOR_AFTER = {3: {"epoch": 0, "position": 6}, 5: {"epoch": 1, "position": 2}, 6: {"epoch": 1, "position": 4}}


def _train(art: Path, steps: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_train(art, NAME, *FLAGS, "--max-training-steps", str(steps), *extra)


def _checkpoints(art: Path) -> Path:
    return model_dir(art, NAME) / "checkpoints"


def _steps_kept(art: Path) -> list[int]:
    return sorted(int(p.name) for p in _checkpoints(art).iterdir() if p.name.isdigit())


def _assert_completed(art: Path, done: subprocess.CompletedProcess[str], steps: int) -> None:
    """The rerun finished, and every step 1..N was trained and logged exactly once, in order."""
    from backends.policy import checkpoint_problem

    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert history_steps(art, NAME) == list(range(1, steps + 1))
    state = read_state(art, NAME)
    assert state["step"] == steps and state["cursor"] == CURSOR_AFTER[steps], state
    assert checkpoint_problem(_checkpoints(art) / f"{steps:04d}") is None
    logs = art / "logs" / NAME
    assert sorted(p.name for p in logs.glob("step_*")) == [f"step_{s:04d}" for s in range(1, steps + 1)]
    parquets = sorted(p.stem for p in (model_dir(art, NAME) / "trajectories" / "train").glob("*.parquet"))
    assert parquets == [f"{s:04d}" for s in range(1, steps + 1)]
    assert not [p for p in art.rglob("*") if ".tmp-" in p.name], "temporary files left behind"


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """stderr ends with exactly one line starting with 'error:' (logging may precede it), and no traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    art = tmp_path_factory.mktemp("base") / "art"
    done = _train(art, 3)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _steps_kept(art)[-1] == 3 and len(_steps_kept(art)) >= 2, _steps_kept(art)  # something to fall back to
    return art


@pytest.fixture
def art(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "art"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


# ---- checks that need no training run ---------------------------------------------------------------------------


def test_every_cut_of_an_adapter_and_a_broken_config_are_found(trained: Path, tmp_path: Path) -> None:
    from backends.policy import checkpoint_problem

    good = _checkpoints(trained) / "0003"
    assert checkpoint_problem(good) is None
    folder = tmp_path / "0003"
    shutil.copytree(good, folder)
    weights = (good / "adapter_model.safetensors").read_bytes()
    for cut in (0, 7, 8, 100, len(weights) // 2, len(weights) - 1):
        (folder / "adapter_model.safetensors").write_bytes(weights[:cut])
        assert checkpoint_problem(folder) is not None, cut
    (folder / "adapter_model.safetensors").write_bytes(weights)
    optimizer = (good / "optimizer.pt").read_bytes()
    (folder / "optimizer.pt").write_bytes(optimizer[: len(optimizer) - 40])
    assert "optimizer.pt" in str(checkpoint_problem(folder))
    (folder / "optimizer.pt").write_bytes(optimizer)
    (folder / "adapter_config.json").write_text('{"peft_type": "LO')
    assert "adapter_config.json" in str(checkpoint_problem(folder))


def test_a_failed_atomic_write_keeps_the_old_file_and_names_a_full_disk(tmp_path: Path) -> None:
    from backends.atomic import DiskFull, atomic_write, atomic_write_text

    target = tmp_path / "state.json"
    atomic_write_text(target, "old")

    def no_space(f) -> None:
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(DiskFull) as caught:
        atomic_write(target, no_space)
    assert caught.value.path == str(target) and str(target) in str(caught.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


# ---- damaged checkpoints ----------------------------------------------------------------------------------------


def _damage_and_resume(art: Path, damage, record_property) -> None:
    kept = _steps_kept(art)
    damage(_checkpoints(art) / "0003")
    done = _train(art, 3)
    lines = [line for line in done.stdout.splitlines() if "is unusable" in line]
    record_property("message", lines[0] if lines else done.stderr[-500:])
    fallback = max(s for s in kept if s < 3)
    assert len(lines) == 1 and lines[0].startswith(f"resume: checkpoint {_checkpoints(art) / '0003'} is unusable"), \
        done.stdout[-3000:] + done.stderr[-3000:]
    assert f"falling back to step {fallback}" in lines[0]
    assert f"resume: starting after step {fallback}" in done.stdout
    _assert_completed(art, done, 3)


@pytest.mark.slow
def test_a_truncated_adapter_falls_back_to_the_last_good_checkpoint(art: Path, record_property) -> None:
    def cut(folder: Path) -> None:
        weights = folder / "adapter_model.safetensors"
        os.truncate(weights, weights.stat().st_size // 3)

    _damage_and_resume(art, cut, record_property)


@pytest.mark.slow
def test_a_corrupt_adapter_config_falls_back(art: Path, record_property) -> None:
    _damage_and_resume(art, lambda folder: (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r'),
                       record_property)


@pytest.mark.slow
def test_a_checkpoint_missing_its_adapter_falls_back_instead_of_restarting_from_fresh_weights(
        art: Path, record_property) -> None:
    _damage_and_resume(art, lambda folder: (folder / "adapter_model.safetensors").unlink(), record_property)


@pytest.mark.slow
def test_the_only_checkpoint_damaged_past_step_0_is_refused_and_nothing_changes(art: Path, record_property) -> None:
    """No fallback to the base model: that would discard three trained steps and delete their history."""
    for step in _steps_kept(art)[:-1]:
        shutil.rmtree(_checkpoints(art) / f"{step:04d}")
    os.truncate(_checkpoints(art) / "0003" / "adapter_model.safetensors", 1000)
    before = {p: p.read_bytes() for p in art.rglob("*") if p.is_file() and p.name != ".run.lock"}
    refused = _train(art, 3)
    line = _one_error_line(refused)
    record_property("message", line)
    assert refused.returncode == 2
    assert line.startswith(f"error: resume: checkpoint {_checkpoints(art) / '0003'} is unusable: "), line
    assert "no earlier good checkpoint" in line
    assert {p: p.read_bytes() for p in art.rglob("*") if p.is_file() and p.name != ".run.lock"} == before


@pytest.mark.slow
def test_a_damaged_initial_checkpoint_at_step_0_is_made_again(tmp_path: Path, record_property) -> None:
    """At step 0 the checkpoint is the seed's fresh adapter: removing it and making it again loses nothing."""
    art = tmp_path / "art"
    started = _train(art, 1, "--eval-only")  # registers (checkpoint 0000) and trains nothing
    assert started.returncode == 0, started.stderr[-3000:]
    assert _steps_kept(art) == [0]
    (_checkpoints(art) / "0000" / "adapter_config.json").unlink()
    done = _train(art, 1)
    lines = [line for line in done.stdout.splitlines() if "is unusable" in line]
    record_property("message", lines[0] if lines else done.stderr[-500:])
    assert len(lines) == 1 and "the initial adapter is made again" in lines[0], done.stdout[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert history_steps(art, NAME) == [0, 1] and read_state(art, NAME)["step"] == 1  # 0: the evaluation's row


# ---- a full disk (a real one: a small tmpfs) ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a tmpfs needs root and mount")
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"mount failed: {made.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free - leave_bytes
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, free)
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("leave_kib", [0, 48], ids=["full at start-up", "full mid-step"])
def test_a_full_disk_ends_in_one_line_naming_the_path_and_the_rerun_completes(
        trained: Path, small_disk: Path, leave_kib: int, record_property) -> None:
    art = small_disk / "art"
    shutil.copytree(trained, art, symlinks=True)
    filler = _fill(small_disk, leave_kib * 1024)
    stopped = _train(art, 5)
    line = _one_error_line(stopped)
    record_property("message", line)
    assert stopped.returncode == 1
    committed = read_state(art, NAME)["step"]
    assert line.startswith("error: disk full (No space left on device) writing "), line
    assert str(art) in line and line.endswith(f"the run resumes after step {committed}"), line
    filler.unlink()
    _assert_completed(art, _train(art, 5), 5)


# ---- SIGTERM --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_mid_step_stops_cleanly_in_one_line_and_the_rerun_completes(art: Path, record_property) -> None:
    """kill -9 is covered by test_crash_resume.py; SIGTERM (what a scheduler or `docker stop` sends) must run the
    trainer's own cleanup: its services, its rollout dir, its lock, then one line saying where it resumes."""
    err = (art.parent / "stderr.txt").open("w+")
    proc = subprocess.Popen(train_cmd(art, NAME, *FLAGS, "--max-training-steps", "6"), stdout=subprocess.PIPE,
                            stderr=err, text=True, env=subprocess_env(), cwd=ROOT)
    step_4 = threading.Event()
    out: list[str] = []

    def read() -> None:
        for text in proc.stdout:
            out.append(text)
            if text.startswith("step 4:"):
                step_4.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert step_4.wait(600), "".join(out)[-3000:]
    proc.send_signal(signal.SIGTERM)  # step 5 is gathering or training now
    proc.wait(timeout=300)
    reader.join(10)
    err.seek(0)
    stderr = err.read()
    lines = stderr.strip().splitlines()
    record_property("message", lines[-1] if lines else "")
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr + "".join(out), stderr[-3000:]
    committed = read_state(art, NAME)["step"]
    assert lines[-1] == f"stopped: SIGTERM; rerun the same command to resume after step {committed}", lines[-3:]
    assert not list((art / "rollouts").iterdir()), "the stopped run left its rollout dir"
    _assert_completed(art, _train(art, 6), 6)


def test_history_rows_cut_by_a_full_disk_are_dropped_at_resume(tmp_path: Path) -> None:
    """ART appends history.jsonl in place (not atomic): a row cut short is rolled back with the uncommitted step."""
    from trainer.resume import rollback_uncommitted

    folder = tmp_path / "model"
    (folder / "checkpoints" / "0002").mkdir(parents=True)
    (folder / "checkpoints" / "0003.tmp-123").mkdir()
    rows = [json.dumps({"step": 1}), json.dumps({"step": 2}), '{"step": 3, "trai']
    (folder / "history.jsonl").write_text("\n".join(rows))
    rollback_uncommitted(folder, 2)
    assert (folder / "history.jsonl").read_text().splitlines() == rows[:2]
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["0002"]
