"""Train an agent with SFT and GRPO on a LoRA adapter: `uv run python train.py --experiment-name NAME [flags]`.

A thin entry point: settings live in `trainer/config.py`, their flags in `trainer/cli.py` (`--config FILE` and
`--print-config`: trainer/config_file.py), their checks in `trainer/checks.py`, resume in `trainer/resume.py`, the
SFT stage in `trainer/sft_stage.py`, the GRPO loop in `trainer/rl.py`, wiring in `trainer/run.py`, export in
`trainer/export.py`. This file maps their errors to exit codes: 2 for bad input (one line, before any work; a
damaged checkpoint with none to fall back to counts as one), 1 for a step that failed or a full disk (one line
naming the path; nothing of the step committed), 143 for SIGTERM (the run's cleanup ran; one line).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

# No hub downloads at run time (a run's models are local; HF_HUB_OFFLINE=0 allows the hub); imports stay off the
# network through entry_point.py, which the trainer package imports first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from trainer.cli import config_from_args, parse_command_line  # noqa: E402
from trainer.config import ConfigError, ExperimentConfig, default_rollout_root  # noqa: E402
from trainer.resume import Cursor, check_resume, committed_step, disk_full_line, rollback_uncommitted  # noqa: E402

STOPPED: list[int] = []  # SIGTERMs received by this run

__all__ = ["ConfigError", "Cursor", "ExperimentConfig", "check_resume", "config_from_args", "default_rollout_root",
           "main", "rollback_uncommitted", "run"]


async def run(config: ExperimentConfig):
    from trainer.run import run as run_experiment

    if threading.current_thread() is threading.main_thread():  # SIGTERM cancels the run: its cleanup runs, then exit
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: (STOPPED.append(1), task.cancel()))
    return await run_experiment(config)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        from trainer.export import export_main

        return export_main(argv[1:])
    try:
        command = parse_command_line(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = command.config
    if command.print_config:
        from trainer.config_file import render_resolved

        text = render_resolved(config)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return 0
    from backends import BackendUnavailable
    from backends.policy import CheckpointError
    from backends.smollm2 import EmbeddedModelError
    from backends.trainer_model import StateFileError
    from rollouts.gather import StepFailed
    from rollouts.scenario import DatasetError
    from sandbox.run import SandboxUnavailable
    from trainer.reward_check import RewardCheckFailed
    from trainer.sft_stage import SFTDataError

    try:
        asyncio.run(run(config))
    except (ConfigError, BackendUnavailable, DatasetError, StateFileError, SFTDataError, SandboxUnavailable,
            EmbeddedModelError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StepFailed as exc:
        print(f"error: {exc}; nothing of this step was committed, rerun the same command to retry it",
              file=sys.stderr)
        return 1
    except RewardCheckFailed as exc:  # --check-rewards, or the preflight before the first RL step
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        if not STOPPED:
            raise
        print(f"stopped: SIGTERM; rerun the same command to resume after step {committed_step(config)}",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as exc:  # a full disk: one line naming the file, whatever was writing it
        if (line := disk_full_line(exc, config)) is None:
            raise
        print(line, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
