"""Real repositories with real bugs, fixed through a sandboxed REPL, scored by their own tests.

The env's `SPEC` (envs/spec.py), read by the registry; light to import: pydantic, the test service client and art
load when a function runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from envs.options import options_for
from envs.r2e.options import R2EOptions
from envs.r2e.probes import reward_probes
from envs.spec import EnvSpec
from rollouts.scenario import DatasetError, Scenario


def cache_dir(cfg: Any) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.art_path) / "r2e_cache"


def _bundled(cfg: Any) -> bool:
    """The embedded default: the bundled sample tasks (no --dataset, no --cache-dir, no generated tasks)."""
    return cfg.dataset is None and cfg.cache_dir is None and not _generated(cfg)


def _generated(cfg: Any) -> bool:
    """`--r2e-tasks generated`: the small generated repair tasks (envs/r2e/generated.py), cached where the run's
    repo cache is; refused beside --dataset, whose rows would be ignored."""
    if options_for(cfg, R2EOptions).r2e_tasks != "generated":
        return False
    if cfg.dataset is not None:
        raise DatasetError("--r2e-tasks generated makes its own tasks: leave out --dataset (or use --r2e-tasks "
                           "bundled to read it)")
    return True


def _cached(cfg: Any, rows: list[Any]) -> list[Scenario]:
    """The rows as scenarios, after caching what needs no Docker: the bundled samples (with no --cache-dir) and
    any generated task among the rows (a verl export of them read back with --dataset)."""
    from envs.r2e.cache import build_from_samples, read_index
    from envs.r2e.generated import build_generated_cache, task_of
    from envs.r2e.scenarios import scenarios_from_rows

    directory = cache_dir(cfg)
    if cfg.cache_dir is None and not _generated(cfg):
        build_from_samples(directory)
    index = read_index(directory)
    if missing := {r.instance_id for r in rows if r.instance_id not in index and task_of(r.instance_id)}:
        index = build_generated_cache(directory, missing)
    return scenarios_from_rows(rows, directory, index)


def _load(cfg: Any) -> list[Scenario]:
    from envs.r2e.generated import run_rows
    from envs.r2e.scenarios import task_rows

    if _generated(cfg):
        rows = run_rows("train")
    else:
        rows = task_rows(cfg.dataset, "train", options_for(cfg, R2EOptions).split, _bundled(cfg))
    scenarios = _cached(cfg, rows)
    return scenarios[: cfg.dataset_size] if cfg.dataset_size else scenarios


def _load_val(cfg: Any) -> list[Scenario]:
    """On the bundled samples evaluation reruns all six and reports the held-out one (never demonstrated to SFT)
    apart from the five with demonstrations; generated tasks, every held-out one and a few demonstrated ones; a
    verl file evaluates on its val file beside it (else itself), other data on the hub's dev_10pr_v1."""
    from envs.r2e.generated import run_rows
    from envs.r2e.scenarios import task_rows

    if _bundled(cfg):
        return _load(cfg)
    if _generated(cfg):
        return _cached(cfg, run_rows("val"))
    return _cached(cfg, task_rows(cfg.dataset, "val", options_for(cfg, R2EOptions).split, False))


async def _rollout(ctx: Any, scenario: Scenario) -> Any:
    from envs.r2e.rollout import rollout

    return await rollout(ctx, scenario)


@contextlib.asynccontextmanager
async def _services(cfg: Any) -> AsyncIterator[dict[str, Any]]:
    from envs.local_service import local_workers, scratch_args, service_client
    from envs.r2e.cache import build_from_samples
    from envs.r2e.client import TestServiceClient
    from envs.r2e.rollout import R2ESettings

    options = options_for(cfg, R2EOptions)
    root = Path(cfg.rollout_root)
    root.mkdir(parents=True, exist_ok=True)
    if cfg.cache_dir is None and not _generated(cfg):  # the embedded default, which the service needs before any
        build_from_samples(cache_dir(cfg))  # scenario is loaded (the reward check starts the services first)
    if _generated(cfg):
        from envs.r2e.generated import build_generated_cache

        build_generated_cache(cache_dir(cfg))
    async with service_client(options.docker_url, "TEST_SERVICE_TOKEN", TestServiceClient, "envs.r2e.test_service",
                              "--runtime", options.test_runtime, "--cache-dir", str(cache_dir(cfg)),
                              "--max-concurrent", local_workers(cfg), *scratch_args(cfg)) as client:
        yield {"r2e": R2ESettings(tests=client, rollout_root=root, system_prompt=options.system_prompt,
                                  reward=options.reward, cell_timeout_s=options.bash_timeout)}


def _sample_split_rewards(groups: list[Any]) -> dict[str, float]:
    """Mean reward on the held-out tasks and on the demonstrated ones, bundled samples or generated tasks (nothing
    for other data)."""
    from envs.r2e.generated import generated_split_ids
    from envs.r2e.scenarios import sample_split_ids

    heldout = set(sample_split_ids("heldout")) | generated_split_ids("heldout")
    demonstrated = set(sample_split_ids("train")) | generated_split_ids("train")
    figures: dict[str, float] = {}
    for name, ids in (("heldout_reward", heldout), ("demonstrated_reward", demonstrated)):
        rewards = [t.reward for g in groups for t in g.trajectories if t.metadata.get("scenario_id") in ids]
        if rewards:
            figures[name] = sum(rewards) / len(rewards)
    return figures


def _write_demos(cfg: Any, out: Path) -> None:
    from envs.r2e.demos import write_demos

    if _generated(cfg):
        from envs.r2e.generated_demos import write_generated_demos

        write_generated_demos(out, cache_dir(cfg), "train", options_for(cfg, R2EOptions).system_prompt,
                              cfg.dataset_size)
        return
    if not _bundled(cfg):
        raise DatasetError("--sft-demos: r2e demonstrations exist for the bundled samples and generated tasks only; "
                           "with your own data give --sft-data FILE or --sft-demos off")
    write_demos(out, "train", cache_dir=cache_dir(cfg), system_prompt=options_for(cfg, R2EOptions).system_prompt)


SPEC = EnvSpec(
    name="r2e", load_scenarios=_load, rollout=_rollout, default_max_steps=10, services=_services,
    load_val=_load_val, runs_model_code=True, step_metrics=_sample_split_rewards, write_demos=_write_demos,
    dataset_suffixes=(".jsonl", ".parquet"), reads_cache=("index.json", "an r2e repo cache"),
    reward_probes=reward_probes, pass_threshold=1.0, options=R2EOptions,
    # One RL epoch over the six bundled samples is 3 steps; the demonstrations finish in 4 turns, so 6 turns leave
    # room for one slip.
    defaults={"groups_per_step": 2, "rollouts_per_group": 4, "max_steps": 6, "max_tokens": 256,
              "max_context_tokens": 2048, "temperature": 0.7, "lora_rank": 16, "sft_epochs": 3,
              "sft_learning_rate": 1e-3, "max_training_steps": 3},
)
