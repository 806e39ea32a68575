"""Meshing scripts for parametric geometries, run by a gmsh service, scored on the mesh.

The env's `SPEC` (envs/spec.py), read by the registry; light to import: the service client, pyarrow and art load
when a function runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from envs.gmsh.options import GmshOptions
from envs.gmsh.probes import reward_probes
from envs.options import options_for
from envs.spec import EnvSpec
from rollouts.scenario import DatasetError, Scenario


def task_file(cfg: Any, split: str) -> Path:
    """The task parquet of a split: --dataset's (its val file beside it; a verl file with none evaluates on
    itself), else the generated tasks of the seed."""
    if cfg.dataset:
        from envs.verl_layout import is_verl, val_file

        path = Path(cfg.dataset)
        if split == "train":
            return path
        return val_file(path) if is_verl(path) else path.with_name(path.name.replace("train", split))
    from envs.gmsh.tasks import ensure_default_tasks

    store = Path(cfg.cache_dir or cfg.art_path) / "gmsh_tasks" / f"seed{cfg.seed}"
    return ensure_default_tasks(store, cfg.seed) / f"{split}.parquet"


def _load(cfg: Any) -> list[Scenario]:
    from envs.gmsh.tasks import load_tasks

    scenarios = load_tasks(task_file(cfg, "train"))
    return scenarios[: cfg.dataset_size] if cfg.dataset_size else scenarios


def _load_val(cfg: Any) -> list[Scenario]:
    from envs.gmsh.tasks import load_tasks

    return load_tasks(task_file(cfg, "val"))


async def _rollout(ctx: Any, scenario: Scenario) -> Any:
    from envs.gmsh.rollout import rollout

    return await rollout(ctx, scenario)


@contextlib.asynccontextmanager
async def _services(cfg: Any) -> AsyncIterator[dict[str, Any]]:
    from envs.gmsh.client import GmshClient
    from envs.local_service import local_workers, scratch_args, service_client

    async with service_client(options_for(cfg, GmshOptions).gmsh_url, "GMSH_SERVICE_TOKEN", GmshClient,
                              "envs.gmsh.service", "--workers", local_workers(cfg), *scratch_args(cfg)) as client:
        yield {"gmsh": client}


def _metrics(groups: list[Any]) -> dict[str, float]:
    from envs.gmsh.rollout import validation_metrics

    return validation_metrics(groups)


def _write_demos(cfg: Any, out: Path) -> None:
    from envs.gmsh.demos import write_demos

    if cfg.dataset:
        raise DatasetError("--sft-demos: gmsh demonstrations exist for the generated tasks only; with --dataset "
                           "give --sft-data FILE or --sft-demos off")
    write_demos(out, "train", seed=cfg.seed, tasks_dir=task_file(cfg, "train").parent)


SPEC = EnvSpec(
    name="gmsh", load_scenarios=_load, rollout=_rollout, default_max_steps=1, services=_services,
    step_metrics=_metrics, load_val=_load_val, runs_model_code=True, write_demos=_write_demos,
    dataset_suffixes=(".parquet",),
    reward_probes=reward_probes, pass_threshold=0.5,  # rewards in [-1, 1]: doing nothing is -1, a right mesh near 1
    options=GmshOptions,
    # The default env: sized for the embedded pretrained model on 2 CPU cores. SFT on its demonstrations first
    # (steps 1-3, a high LoRA step size: the model learns the few demonstrations by heart), then GRPO (4-7) with a
    # step size large enough to move the policy in 4 steps (refills keep each step's groups informative; each
    # round draws 2 groups more than it needs, as the CPU backend decodes 24 rows about as fast per row as 8).
    # 4 groups a step, not 2: a step that trained on 2 parts pulled the policy toward them and away from parts SFT
    # solved (README: runs B and D forgot boxes and plates); an update averaged over 4 parts pulls less.
    # Negative advantages count half (ART's advantage_balance): a failed script for a part the SFT'd model misses
    # is often its script for a part it solves. Half weight alone did not stop the forgetting (README: run D).
    # Evaluations are greedy: one rollout per held-out part then measures the policy, not the sampling noise.
    defaults={"groups_per_step": 4, "rollouts_per_group": 4, "max_tokens": 640, "max_context_tokens": 1536,
              "temperature": 0.7, "lora_rank": 16, "sft_epochs": 3, "sft_learning_rate": 1e-3,
              "learning_rate": 3e-4, "max_training_steps": 4, "eval_temperature": 0.0, "refill_ahead": 2,
              "advantage_balance": 0.5},
)
