"""`TrainerModel`: ART's `TrainableModel` with a state file that survives kill -9 and W&B offline by default.

ART writes `state.json` in place, so a kill during that write could leave half a file: the resume point.
Here it is written to a temp file and renamed. ART logs to W&B only when `WANDB_API_KEY` is set; without it
this model still records the run offline (under the art path) unless `WANDB_MODE=disabled`.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import art


class StateFileError(RuntimeError):
    pass


class TrainerModel(art.TrainableModel):
    def overwrite_state(self, state: dict[str, Any]) -> None:
        output_dir = self._get_output_dir()
        os.makedirs(output_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".json", dir=output_dir)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(output_dir, "state.json"))

    def read_state(self) -> dict[str, Any] | None:
        path = os.path.join(self._get_output_dir(), "state.json")
        try:
            return super().read_state()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StateFileError(
                f"{path} is corrupted ({exc.__class__.__name__}: {exc}); restore it or delete it to restart "
                "the resume point from the newest checkpoint"
            ) from exc

    def _get_wandb_run(self):  # noqa: ANN202 - same signature as ART's
        if "WANDB_API_KEY" in os.environ or os.environ.get("WANDB_MODE") == "disabled":
            return super()._get_wandb_run()
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
