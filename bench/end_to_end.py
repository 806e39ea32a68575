"""The README's first command, old code against this code, on this machine: `uv run python bench/end_to_end.py`.

Both runs are `train.py --experiment-name e2e` with nothing else (the default gmsh run: SFT on the demonstrations,
GRPO, held-out evaluations before and after), each in a fresh art path and log folder, one after the other on an
otherwise idle machine; the old code is checked out at `--old-rev` in a temporary git worktree and run with the
same interpreter and packages. Wall time includes the base model's conversion and the env's set-up, as a user
waits for them. Prints both times, their ratio (goal: this code at least 2.5x faster) and each run's held-out
rewards, so a speed-up that changed what the run learns shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser  # noqa: E402

SPEEDUP_GOAL = ">= 2.5"


def run_train(code: Path, work: Path, extra: list[str], timeout: float) -> tuple[float, list[dict]]:
    """Wall seconds of one `train.py` run from `code`, and its history rows."""
    art, logs = work / "art", work / "logs"
    command = [sys.executable, str(code / "train.py"), "--experiment-name", "e2e", "--art-path", str(art),
               "--log-dir", str(logs), *extra]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=code, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"error: {code.name}: train.py exited {result.returncode}: {result.stderr[-1500:]}")
    histories = list(art.glob("*/models/e2e/history.jsonl"))
    rows = [json.loads(line) for line in histories[0].read_text().splitlines()] if histories else []
    return elapsed, rows


def held_out(rows: list[dict]) -> list[float]:
    return [round(float(r["val/reward"]), 3) for r in rows if "val/reward" in r]


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-rev", default="6299647", help="the code to compare with (a git revision)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("extra", nargs="*", help="flags after -- go to both runs (default: none, the README's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        old_code = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_code), args.old_rev],
                       check=True, capture_output=True)
        try:
            print(f"old code {args.old_rev} at {old_code}; load average {os.getloadavg()[0]:.2f}", flush=True)
            old_s, old_rows = run_train(old_code, Path(tmp) / "old-run", args.extra, args.timeout)
            print(f"old: {old_s:.0f} s, held-out reward {held_out(old_rows)}", flush=True)
            new_s, new_rows = run_train(ROOT, Path(tmp) / "new-run", args.extra, args.timeout)
            print(f"new: {new_s:.0f} s, held-out reward {held_out(new_rows)}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_code)],
                           capture_output=True)
    figure("end to end, old code", old_s, unit="s")
    figure("end to end, this code", new_s, unit="s")
    figure("end to end speed-up, old / this code", old_s / new_s, SPEEDUP_GOAL)
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
