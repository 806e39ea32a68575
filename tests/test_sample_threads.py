"""The sampler's thread count (backends/sample_threads.py): every core while the rest of the machine is idle, one
fewer for each core other processes keep busy, a fixed count from ART_SAMPLE_THREADS, half the cores without
/proc/stat; and, for real, fewer threads beside a process that spins."""

import os
import subprocess
import sys
import time

import pytest

from backends import sample_threads
from backends.sample_threads import AdaptiveThreads, fixed_sample_threads, machine_busy_seconds

TICKS = os.sysconf("SC_CLK_TCK")


def write_stat(path, busy_seconds: float) -> None:
    user = int(busy_seconds * TICKS)
    path.write_text(f"cpu  {user} 0 0 100000 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")


@pytest.fixture
def clock(monkeypatch):
    now = {"wall": 100.0, "own": 5.0}
    monkeypatch.setattr(sample_threads.time, "monotonic", lambda: now["wall"])
    monkeypatch.setattr(sample_threads.time, "process_time", lambda: now["own"])
    return now


def test_other_processes_cpu_use_takes_cores_away(tmp_path, clock):
    stat = tmp_path / "stat"
    write_stat(stat, 1000.0)
    chooser = AdaptiveThreads(cores=4, stat=str(stat))
    assert chooser.choose() == 4
    clock["wall"] += 1.0
    clock["own"] += 1.0  # this process kept one core busy: not counted against it
    write_stat(stat, 1000.0 + 1.0 + 2.0)  # two more cores busy elsewhere
    assert chooser.choose() == 2
    clock["wall"] += 0.1  # within the interval: the last choice stands
    write_stat(stat, 1003.3)
    assert chooser.choose() == 2
    clock["wall"] += 1.0
    write_stat(stat, 1003.0 + 0.3)  # the others went quiet
    assert chooser.choose() == 4


def test_never_fewer_than_one_thread(tmp_path, clock):
    stat = tmp_path / "stat"
    write_stat(stat, 0.0)
    chooser = AdaptiveThreads(cores=2, stat=str(stat))
    chooser.choose()
    clock["wall"] += 1.0
    write_stat(stat, 8.0)
    assert chooser.choose() == 1


def test_without_proc_stat_half_the_cores(tmp_path):
    assert machine_busy_seconds(str(tmp_path / "missing")) is None
    assert AdaptiveThreads(cores=8, stat=str(tmp_path / "missing")).choose() == 4


def test_art_sample_threads_fixes_the_count(monkeypatch):
    monkeypatch.setenv("ART_SAMPLE_THREADS", "3")
    assert fixed_sample_threads() == 3
    monkeypatch.delenv("ART_SAMPLE_THREADS")
    assert fixed_sample_threads() is None


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or machine_busy_seconds() is None, reason="needs 2 cores and Linux")
def test_a_spinning_process_beside_the_sampler_gets_a_core():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        chooser = AdaptiveThreads()
        chooser.choose()
        time.sleep(1.2)
        assert chooser.choose() <= (os.cpu_count() or 1) - 1
    finally:
        spinner.kill()
        spinner.wait()
