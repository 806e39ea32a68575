"""Pipelined steps vs the ideal: `uv run python bench/async_pipeline.py [--parts fake cpu-r2e]`.

The real step loop (`trainer.rl.rl_loop`: gather, staleness, train, `model.log`, RLM logs, state.json commit) runs
toy rollouts against a fake model server of fixed latency (its own process, as vLLM is), and a stand-in for the GPU
trainer whose `train()` takes a fixed time without holding the event loop. One step's rollouts fill the concurrency
limit, so one batch at a time is gathered at full speed and the ideal step time of a pipelined run is
max(rollout time, train time), the rollout time being the median gather time of the synchronous run. Step time =
the mean time between commits after the first two (the pipeline is full by then). Three regimes: rollouts slower
than training, even, faster.

`--parts cpu-r2e`: the real thing on this machine: `train.py --env r2e` on the CPU backend (`--r2e-models`, by default
the tiny random model: seconds a step, not minutes), synchronous and with `--max-steps-off-policy 1`. Sampling and
training share the cores and one torch model (both hold the policy lock), so only the env's own time (sandboxed
REPL cells and tests) overlaps training.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ["WANDB_MODE"] = "disabled"

from bench.figures import figure  # noqa: E402
from bench.gather import fake_server_process  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402

if TYPE_CHECKING:  # ART is imported where it is used, once the flags are parsed: --help is instant
    from art.types import LocalTrainResult

GROUPS, PER_GROUP = 2, 4


class FixedTimeBackend:
    """Stands in for a GPU trainer (LocalBackend in dedicated mode, a remote engine): `train()` takes `seconds` and
    leaves the event loop free; rollouts go to `base_url`. Only what the step loop calls is here."""

    def __init__(self, base_url: str, seconds: float):
        self.base_url, self.seconds, self.step = base_url, seconds, 0

    async def register(self, model: Any) -> None:
        pass

    async def _prepare_backend_for_training(self, model: Any, config: Any = None) -> tuple[str, str]:
        return self.base_url, "key"

    def _model_inference_name(self, model: Any, step: int | None = None) -> str:
        return model.name

    async def _get_step(self, model: Any) -> int:
        return self.step

    async def train(self, model: Any, groups: Any, **_: Any) -> LocalTrainResult:
        from art.types import LocalTrainResult

        await asyncio.sleep(self.seconds)
        self.step += 1
        return LocalTrainResult(step=self.step, metrics={}, checkpoint_path=None)

    async def _delete_checkpoint_files(self, model: Any, steps_to_keep: list[int]) -> None:
        pass

    async def close(self) -> None:
        pass


class NoMonitor:
    def figures(self) -> dict[str, float]:
        return {}


@dataclass
class Timing:
    step_s: float  # mean time between commits once the pipeline is full
    gather_s: float  # median gather time of one step's rollouts
    off_policy_max: float


async def run_loop(base_url: str, train_s: float, steps: int, max_off_policy: int, art_path: str) -> Timing:
    from backends.trainer_model import TrainerModel
    from envs.registry import get_env
    from rollouts.context import RolloutContext, RolloutSettings
    from rollouts.gather import GatherLimits
    from trainer.config import ExperimentConfig
    from trainer.rl import rl_loop
    from trainer.run import Run

    name = f"k{max_off_policy}"
    config = ExperimentConfig(experiment_name=name, model_name=name, env="toy", groups_per_step=GROUPS,
                              rollouts_per_group=PER_GROUP, max_concurrent=GROUPS * PER_GROUP,
                              max_rollouts_per_second=1e6, dataset_size=GROUPS * steps, num_epochs=2,
                              max_training_steps=steps, art_path=art_path, log_dir=f"{art_path}/logs",
                              log_sample_rate=0.0, learning_rate=1e-2, max_steps_off_policy=max_off_policy)
    env = get_env("toy")
    model = TrainerModel(name=name, project="bench", base_model="fake", base_path=art_path)
    model.report_metrics = []
    backend = FixedTimeBackend(base_url, train_s)
    await model.register(backend)
    model_dir = Path(art_path) / "bench" / "models" / name
    the_run = Run(config, env, model, backend, model_dir, max_steps=1)
    the_run.ctx = RolloutContext(model=model, settings=RolloutSettings(temperature=1.0),
                                 max_connections=GROUPS * PER_GROUP)
    the_run.limits = GatherLimits.create(config.max_concurrent, config.max_rollouts_per_second)
    commits: list[float] = []
    commit = the_run.commit
    the_run.commit = lambda step, **extra: (commits.append(time.monotonic()), commit(step, **extra))[1]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the loop's line per step
            await rl_loop(the_run, env.load_scenarios(config), NoMonitor())
    finally:
        await the_run.ctx.aclose()
    rows = [json.loads(line) for line in (model_dir / "history.jsonl").read_text().splitlines()]
    gathers = [r["train/gather_seconds"] for r in rows if "train/gather_seconds" in r]
    return Timing(step_s=(commits[-1] - commits[1]) / (len(commits) - 2), gather_s=statistics.median(gathers),
                  off_policy_max=max(r.get("train/off_policy_steps_max", 0.0) for r in rows))


async def regimes(steps: int, pairs: list[tuple[float, float]]) -> None:
    for latency, train_s in pairs:
        with fake_server_process(latency) as base_url, tempfile.TemporaryDirectory() as tmp:
            sync = await run_loop(base_url, train_s, steps, 0, f"{tmp}/sync")
            pipelined = await run_loop(base_url, train_s, steps, 1, f"{tmp}/async")
        ideal = max(sync.gather_s, train_s)
        label = f"rollout {sync.gather_s:.2f} s, train {train_s:.2f} s"
        print(f"{label}: synchronous {sync.step_s:.3f} s/step, --max-steps-off-policy 1 {pipelined.step_s:.3f} "
              f"s/step (off-policy at most {pipelined.off_policy_max:.0f}), ideal {ideal:.3f} s/step", flush=True)
        figure(f"async / ideal step time ({label})", pipelined.step_s / ideal, "<= 1.1")
        figure(f"async / sync step time ({label})", pipelined.step_s / sync.step_s)


def cpu_r2e(steps: int, base_model: str) -> None:
    """`train.py --env r2e` on the CPU backend, synchronous then pipelined: the mean step time from step 3 on (with
    K=1 the gathers of steps 1 and 2 start together, so step 2 is short: the pipeline is full from step 3)."""
    from tests.helpers import history_rows, run_train

    flags = ["--env", "r2e", "--base-model", base_model, "--max-training-steps", str(steps), "--groups-per-step", "2",
             "--rollouts-per-group", "2", "--max-steps", "3", "--max-tokens", "64", "--log-sample-rate", "0",
             "--num-epochs", "100", "--sft-demos", "off"]
    times = {}
    for k in (0, 1):
        with tempfile.TemporaryDirectory() as tmp:
            done = run_train(Path(tmp), f"r2e-k{k}", *flags, "--max-steps-off-policy", str(k), timeout=3000)
            if done.returncode:
                raise SystemExit(f"train.py --env r2e (K={k}) failed: {done.stderr[-2000:]}")
            rows = [r for r in history_rows(Path(tmp), f"r2e-k{k}") if "train/step_seconds" in r]
            full = rows[2:]
            times[k] = statistics.fmean(r["train/step_seconds"] for r in full)
            gathers = statistics.fmean(r["train/gather_seconds"] for r in full)
            trains = statistics.fmean(r["train/train_seconds"] for r in full)
            trained = sum(r["train/trained_groups"] for r in rows)
            print(f"r2e on the CPU backend ({base_model}), K={k}: {times[k]:.2f} s/step over steps 3-{steps} (gather "
                  f"{gathers:.2f} s, train {trains:.2f} s; {trained:.0f} group(s) trained in {len(rows)} steps)",
                  flush=True)
    figure(f"r2e on the CPU backend ({base_model}): async / sync step time", times[1] / times[0])


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["fake", "cpu-r2e"], default=["fake"])
    parser.add_argument("--steps", type=at_least(3), default=8, help="fake: steps per run (at least 3)")
    parser.add_argument("--r2e-steps", type=at_least(3), default=5, help="cpu-r2e: steps per run (at least 3)")
    parser.add_argument("--r2e-models", nargs="+", default=["tiny-random"],
                        help="cpu-r2e: --base-model of each measured pair (smollm2-135m: minutes a step)")
    args = parser.parse_args()  # at least 3 steps: with K=1 steps 1 and 2 gather together, step time is read from 3
    if "fake" in args.parts:
        asyncio.run(regimes(args.steps, [(1.0, 0.5), (0.5, 0.5), (0.25, 0.5)]))
    if "cpu-r2e" in args.parts:
        for model in args.r2e_models:
            cpu_r2e(args.r2e_steps, model)


if __name__ == "__main__":
    main()
