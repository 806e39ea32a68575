"""W&B where users look: each RL step's sampled rollouts as a table, and the HTML report as an artifact at the end.

The metrics already reach W&B through ART's `model.log`; what a W&B user could not see there is what the model
actually wrote. So every step, the rollouts that `rollouts/logs.py` samples for the step logs (the same ones: the
same pure function of seed, step, group and index) also go to the run as one `wandb.Table` under
`train/rollouts`, a row per rollout: step, env, scenario id, the policy step that sampled it, prompt, response,
reward and one column per reward-breakdown figure (the trajectory's metrics). At the end the report
(monitor/report.py) is logged as a `run-report` artifact, so the run page links the page a person reads first.

Both go to the model's one W&B run (`TrainerModel.wandb_run`): ART's own run where it has one (a W&B key: the
GPU and remote backends log there too), else the offline run under the art path. Never a second run, and with
W&B off (`--wandb disabled`) nothing here runs, wandb is not even imported. W&B is a copy of what is on disk: a
failure to log to it is a warning, never a failed run (a full disk excepted, which is the run's one line).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rollouts.logs import is_sampled

if TYPE_CHECKING:
    import art

log = logging.getLogger("train")

ROLLOUT_TABLE = "train/rollouts"  # under train/: ART's online run plots train/* against training_step
REPORT_TYPE = "run-report"
BASE_COLUMNS = ["step", "env", "scenario_id", "policy_step", "prompt", "response", "reward"]
BREAKDOWN_PREFIX = "metrics/"  # a breakdown figure whose name is a base column's keeps both apart


class HasWandbRun(Protocol):
    """What these hooks need of the model (backends/trainer_model.py's TrainerModel)."""

    def wandb_run(self) -> Any: ...


def _text(content: Any) -> str:
    """A message's content as text: chat content may be a list of parts (`{"type": "text", "text": ...}`)."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def conversation(trajectory: art.Trajectory) -> tuple[str, str]:
    """(prompt, response): what the model saw before its first reply, and everything from that reply on.

    A one-reply rollout's response is the reply itself; a multi-turn one's is the rest of the conversation with
    each message's role, so the environment's answers between replies stay readable."""
    before: list[str] = []
    after: list[tuple[str, str]] = []
    for item in trajectory.messages_and_choices:
        if isinstance(item, dict):
            role, text = str(item.get("role")), _text(item.get("content"))
        else:  # an OpenAI Choice: the model's reply as sampled
            role, text = "assistant", _text(item.message.content)
        if role == "assistant" or after:
            after.append((role, text))
        else:
            before.append(f"[{role}] {text}")
    if len(after) == 1:
        return "\n\n".join(before), after[0][1]
    return "\n\n".join(before), "\n\n".join(f"[{role}] {text}" for role, text in after)


def _cell(value: Any) -> float | str | None:
    """Breakdown figures are numbers (ints, floats, bools alike go in as floats, so a column keeps one type)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def rollout_rows(step: int, groups: list[art.TrajectoryGroup], *, seed: int, rate: float,
                 env: str) -> tuple[list[str], list[list[Any]]]:
    """The table of one step's sampled rollouts: (columns, rows). A mixed run's env is each group's own."""
    from envs.mix.composite import MIX

    picked: list[tuple[str, art.Trajectory]] = []
    for g, group in enumerate(groups):
        for i, trajectory in enumerate(group.trajectories):
            if is_sampled(seed, step, g, i, rate):
                scenario = trajectory.metadata.get("scenario_id") or group.metadata.get("scenario_id", "")
                picked.append((str(scenario).partition("/")[0] if env == MIX else env, trajectory))  # `<env>/<id>`
    names = sorted({key for _, t in picked for key in t.metrics})
    columns = BASE_COLUMNS + [BREAKDOWN_PREFIX + k if k in BASE_COLUMNS else k for k in names]
    rows = []
    for g_env, trajectory in picked:
        prompt, response = conversation(trajectory)
        scenario = str(trajectory.metadata.get("scenario_id", ""))
        rows.append([step, g_env, scenario, trajectory.initial_policy_version, prompt, response,
                     float(trajectory.reward)] + [_cell(trajectory.metrics.get(k)) for k in names])
    return columns, rows


def artifact_name(experiment: str) -> str:
    """W&B artifact names take letters, digits, '-', '_' and '.': anything else in the experiment name is '-'."""
    return "report-" + re.sub(r"[^\w.-]", "-", experiment)


def _guarded(what: str, action: Any) -> Any:
    """Run one W&B call; a failure is a warning naming what was not logged (a full disk is re-raised)."""
    from backends.atomic import is_disk_full

    try:
        return action()
    except Exception as exc:
        if is_disk_full(exc):
            raise
        log.warning("W&B: could not log %s (%s: %s)", what, exc.__class__.__name__, exc)
        return None


def log_rollouts(model: HasWandbRun, step: int, groups: list[art.TrajectoryGroup], *, seed: int, rate: float,
                 env: str) -> int:
    """Log one RL step's sampled rollouts as a table; returns the rows logged (0 with W&B off or none sampled)."""
    run = model.wandb_run() if rate > 0 else None
    if run is None:
        return 0
    columns, rows = rollout_rows(step, groups, seed=seed, rate=rate, env=env)
    if not rows:
        return 0

    def send() -> int:
        import wandb

        table = wandb.Table(columns=columns, data=rows, allow_mixed_types=True)
        run.log({ROLLOUT_TABLE: table, "training_step": step})
        return len(rows)

    return _guarded(f"the rollouts of step {step}", send) or 0


def log_report(model: HasWandbRun, report: Path, experiment: str, step: int | None = None) -> bool:
    """Log the HTML report as a `run-report` artifact (file `report.html`); False with W&B off or on failure."""
    run = model.wandb_run()
    if run is None:
        return False

    def send() -> bool:
        import wandb

        artifact = wandb.Artifact(artifact_name(experiment), type=REPORT_TYPE,
                                  description=f"HTML report of {experiment} (python -m monitor.report)",
                                  metadata={"experiment": experiment, "step": step})
        artifact.add_file(str(report), name="report.html")
        run.log_artifact(artifact)
        return True

    return bool(_guarded(f"the report {report}", send))

