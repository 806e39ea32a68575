"""Running `train.py` the way a user does: a subprocess with flags, read back through ART's files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_cmd(art_path: Path, name: str, *flags: str) -> list[str]:
    """Tests run the random tiny model unless they name another (the pretrained default takes ~30 s to convert),
    skip the default held-out evaluations before and after training unless they ask for them, and draw no refill
    groups unless they pass --refill (the tiny model's groups are mostly flat, and these tests pin group counts)."""
    model = [] if "--base-model" in flags else ["--base-model", "tiny-random"]
    if not any(f.startswith("--eval-before-after") or f == "--no-eval-before-after" for f in flags):
        model.append("--no-eval-before-after")
    if not any(f.startswith("--refill") for f in flags):
        model += ["--refill", "off"]
    return [sys.executable, str(ROOT / "train.py"), "--experiment-name", name, "--art-path", str(art_path),
            "--rollout-root", str(art_path / "rollouts"), "--log-dir", str(art_path / "logs"), *model, *flags]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="disabled", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    env.pop("WANDB_API_KEY", None)
    return env


def run_train(art_path: Path, name: str, *flags: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(train_cmd(art_path, name, *flags), capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(), cwd=ROOT)


def model_dir(art_path: Path, name: str, project: str = "art-agent-trainer") -> Path:
    return art_path / project / "models" / name


def history_steps(art_path: Path, name: str) -> list[int]:
    path = model_dir(art_path, name) / "history.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def history_rows(art_path: Path, name: str) -> list[dict]:
    path = model_dir(art_path, name) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_state(art_path: Path, name: str) -> dict:
    return json.loads((model_dir(art_path, name) / "state.json").read_text())


def kill_when(art_path: Path, name: str, flags: list[str], ready: Callable[[], bool], jitter_s: float, *,
              start_wait: float, ready_wait: float, after: tuple[str, ...] = ("start:", "resume: starting")) -> dict:
    """Start the trainer; once it printed a line starting with `after` (by default: it started its steps; within
    `start_wait` s) and `ready()` holds (or `ready_wait` s passed), wait `jitter_s`, then kill -9. Returns whether it
    was still alive then, and what it printed."""
    proc = subprocess.Popen(train_cmd(art_path, name, *flags), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=subprocess_env(), cwd=ROOT)
    seen: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            seen.append(line.rstrip())
            if line.startswith(after):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(start_wait), "\n".join(seen[-30:])
    deadline = time.monotonic() + ready_wait
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(jitter_s)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(10)
    return {"killed_alive": alive, "output": seen}
