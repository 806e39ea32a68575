"""`TrainerModel`: ART's `TrainableModel` with a state file that survives kill -9 and W&B offline by default.

ART writes `state.json` in place, so a kill during that write could leave half a file: the resume point.
Here it is written atomically (backends/atomic.py). Each commit (a merge that sets "step") first leaves a copy of
the state in that step's checkpoint folder (`trainer_state.json`), so a resume that finds the newest checkpoint
damaged can fall back to an older one with the state (data cursor, SFT epochs) that belongs to it. ART's own
files are guarded so that a full disk raises `DiskFull` naming the file: the trajectories parquet and
`history.jsonl` (which ART appends in place; a row cut by a kill or a full disk is dropped at resume, see
trainer/resume.py). ART logs to W&B only when `WANDB_API_KEY` is set; without it this model still records the run
offline (under the art path) unless `WANDB_MODE=disabled`. `wandb_run()` hands that same run to the trainer's own
W&B logging (rollout tables, the report artifact: monitor/wandb_log.py), so a run never has two.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import art

from backends.atomic import atomic_write_json, disk_full_guard

STATE_SNAPSHOT = "trainer_state.json"  # in checkpoints/NNNN: the state as committed with that step


def _caller_module() -> str:
    """The module of the code that called `_get_wandb_run` (two frames up: this helper, then the method)."""
    return str(sys._getframe(2).f_globals.get("__name__", ""))


class StateFileError(RuntimeError):
    pass


class TrainerModel(art.TrainableModel):
    def overwrite_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(os.path.join(self._get_output_dir(), "state.json"), state)

    def merge_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """ART's deep merge; a commit (an update that sets "step") writes the step's snapshot before state.json,
        so a committed checkpoint always carries its own state."""
        merged = self._deep_merge_dicts(self.read_state() or {}, state)
        if "step" in state:
            checkpoint = Path(self._get_output_dir()) / "checkpoints" / f"{int(state['step']):04d}"
            if checkpoint.is_dir():
                atomic_write_json(checkpoint / STATE_SNAPSHOT, merged)
        self.overwrite_state(merged)
        return merged

    def read_state(self) -> dict[str, Any] | None:
        path = os.path.join(self._get_output_dir(), "state.json")
        try:
            return super().read_state()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StateFileError(
                f"{path} is corrupted ({exc.__class__.__name__}: {exc}); restore it or delete it to restart "
                "the resume point from the newest checkpoint"
            ) from exc

    async def log(self, trajectories: Any = None, split: str = "val", **kwargs: Any) -> None:
        step = kwargs.get("step")
        where = Path(self._get_output_dir()) / "trajectories" / split
        with disk_full_guard(where / f"{step:04d}.parquet" if isinstance(step, int) else where):
            await super().log(trajectories, split, **kwargs)

    def _log_metrics(self, metrics: dict[str, float], split: str, step: int) -> None:
        with disk_full_guard(Path(self._get_output_dir()) / "history.jsonl"):
            super()._log_metrics(metrics, split, step)

    def _get_wandb_run(self):  # noqa: ANN202 - same signature as ART's
        """ART's run with a key; without one, the offline run, but only for the model's own logging.

        ART returns None without a key (art/model.py), and its backends rely on that: `LocalBackend.train` (so
        Tinker and Megatron, its subclasses) and ServerlessBackend pass any run they get to `record_provenance`,
        whose `wandb.Api()` raises UsageError without a key, after the checkpoint is saved and before the step is
        committed. Provenance is metadata on a W&B server artifact, which an offline run never has: so every caller
        outside `art.model` (where `log` writes metrics) gets ART's None, and so does any caller in offline mode.
        """
        if os.environ.get("WANDB_MODE") == "disabled":
            return None
        if _arts_run_mode():
            return super()._get_wandb_run()
        if _caller_module() != "art.model":
            return None
        return self._offline_run()

    def wandb_run(self):  # noqa: ANN201 - wandb's Run, imported only when W&B is on
        """The one W&B run this model logs to, for the trainer's own tables and artifacts (monitor/wandb_log.py);
        None when W&B is off (`--wandb disabled`: no metrics go to W&B, so nothing else does either).

        With a key it is ART's run, the one `log` and ART's backends use; without one, the offline run `log`
        records to: either way the same run, created here if nothing has logged yet, never a second one."""
        on = ("wandb" in self.report_metrics if self.report_metrics is not None else "WANDB_API_KEY" in os.environ)
        if not on or os.environ.get("WANDB_MODE") == "disabled":
            return None
        return super()._get_wandb_run() if _arts_run_mode() else self._offline_run()

    def _offline_run(self):  # noqa: ANN202 - wandb's Run
        if self._wandb_run is None or self._wandb_run._is_finished:
            import wandb

            wandb_dir = os.path.join(self._get_output_dir(), "wandb")
            os.makedirs(wandb_dir, exist_ok=True)
            self._wandb_run = wandb.init(
                project=self.project, name=self.name, id=self.name, dir=wandb_dir, mode="offline",
                config=self._wandb_config or None, reinit="create_new",
            )
            self._wandb_run.define_metric("training_step")
            self._wandb_run.define_metric("*", step_metric="training_step")
        return self._wandb_run


def _arts_run_mode() -> bool:
    """ART makes and owns the run when it has a key and W&B is not told to stay offline."""
    return os.environ.get("WANDB_MODE") != "offline" and "WANDB_API_KEY" in os.environ
