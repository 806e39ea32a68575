"""Env name -> how to load its scenarios and how to run one rollout. Adding an env adds one entry here."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs.probes import RewardProbe
from envs.scenario import DatasetError, Scenario
from services.process import ServiceProcess

if TYPE_CHECKING:  # the registry is read while flags are checked, before the heavy imports
    import art

    from rollouts.context import RolloutContext

RolloutFn = Callable[["RolloutContext", Scenario], Awaitable["art.Trajectory"]]


class UnknownEnvError(ValueError):
    pass


@dataclass(frozen=True)
class EnvSpec:
    name: str
    load_scenarios: Callable[[Any], list[Scenario]]  # receives the experiment config
    rollout: RolloutFn
    default_max_steps: int = 1
    # An async context manager factory: config -> {service name: client}, started before the first step.
    services: Callable[[Any], contextlib.AbstractAsyncContextManager[dict[str, Any]]] | None = None
    # Env-specific figures for a step's groups, beside the generic ones of rollouts.metrics.
    step_metrics: Callable[[list[Any]], dict[str, float]] | None = None
    # The held-out scenarios `--eval-every` / `--eval-only` run (never trained on).
    load_val: Callable[[Any], list[Scenario]] | None = None
    # True when the env executes model output: the trainer then refuses to start without a working sandbox.
    runs_model_code: bool = False
    # (config, out.jsonl) -> writes the env's demonstrations of its train split for the SFT stage (--sft-demos).
    write_demos: Callable[[Any, Path], Any] | None = None
    # state.json's "cursor" dict -> the data cursor: `take(scenarios, count, seed) -> (batch, next cursor)`,
    # an `epoch` field, `describe()` for the resume line, and a dataclass so the loop can commit it.
    # None: trainer.resume.Cursor (one shuffled order). A mixed run brings its own (one cursor per env).
    make_cursor: Callable[[dict[str, Any]], Any] | None = None
    # (config, scenario) -> the scripted outputs that prove the reward cannot be gamed (envs/probes.py): oracle,
    # do-nothing, cheats. None: the env has none yet, and the reward preflight says so.
    reward_probes: Callable[[Any, Scenario], list[RewardProbe]] | None = None
    # The reward an answer must reach to count as a pass: the oracle at or above it, do-nothing and cheats below.
    pass_threshold: float = 1.0


@contextlib.asynccontextmanager
async def _service_client(urls: list[str], token_env: str, make_client: Callable[[list[str], str], Any],
                          module: str, *args: str) -> AsyncIterator[Any]:
    """Remote nodes when URLs are given (token from `token_env`), else the embedded default: our own service on
    a free local port, stopped at exit."""
    with contextlib.ExitStack() as stack:
        if urls:
            client = make_client(list(urls), os.environ.get(token_env, ""))
        else:
            service = stack.enter_context(ServiceProcess(module, *args))
            client = make_client([service.url], service.token)
        try:
            yield client
        finally:
            await client.aclose()


def _local_workers(cfg: Any) -> str:
    return str(max(1, min(cfg.max_concurrent, os.cpu_count() or 1)))


def _scratch_args(cfg: Any) -> list[str]:
    """A local service keeps its temp dirs under the rollout root (in training, the run's own folder), so the
    trainer's sweep of dead runs removes what a service killed mid-request left."""
    return ["--scratch-root", str(cfg.rollout_root)]


def _toy() -> EnvSpec:
    from envs.toy import scenarios as toy
    from envs.toy.probes import reward_probes
    from envs.toy.rollout import rollout

    return EnvSpec(
        name="toy",
        load_scenarios=lambda cfg: toy.load_scenarios(cfg.dataset_size or 32, cfg.seed, cfg.toy_target),
        rollout=rollout,
        load_val=lambda cfg: toy.load_scenarios(8, cfg.seed, cfg.toy_target, split="val"),
        # A pass is the whole reply the target (evaluation's pass rate counts the same); the oracle is exactly that.
        reward_probes=reward_probes, pass_threshold=1.0,
    )


def _gmsh() -> EnvSpec:
    from envs.gmsh.client import GmshClient
    from envs.gmsh.probes import reward_probes as gmsh_probes
    from envs.gmsh.rollout import rollout, validation_metrics
    from envs.gmsh.tasks import ensure_default_tasks, load_tasks

    def task_file(cfg: Any, split: str) -> Path:
        if cfg.dataset:
            path = Path(cfg.dataset)
            return path if split == "train" else path.with_name(path.name.replace("train", split))
        store = Path(cfg.cache_dir or cfg.art_path) / "gmsh_tasks" / f"seed{cfg.seed}"
        return ensure_default_tasks(store, cfg.seed) / f"{split}.parquet"

    def load(cfg: Any) -> list[Scenario]:
        scenarios = load_tasks(task_file(cfg, "train"))
        return scenarios[: cfg.dataset_size] if cfg.dataset_size else scenarios

    @contextlib.asynccontextmanager
    async def services(cfg: Any) -> AsyncIterator[dict[str, Any]]:
        async with _service_client(cfg.gmsh_url, "GMSH_SERVICE_TOKEN", GmshClient, "envs.gmsh.service",
                                   "--workers", _local_workers(cfg), *_scratch_args(cfg)) as client:
            yield {"gmsh": client}

    def write_demos(cfg: Any, out: Path) -> None:
        from envs.gmsh.demos import write_demos

        if cfg.dataset:
            raise DatasetError("--sft-demos: gmsh demonstrations exist for the generated tasks only; with --dataset "
                               "give --sft-data FILE or --sft-demos off")
        write_demos(out, "train", seed=cfg.seed, tasks_dir=task_file(cfg, "train").parent)

    return EnvSpec(name="gmsh", load_scenarios=load, rollout=rollout, default_max_steps=1, services=services,
                   step_metrics=validation_metrics, load_val=lambda cfg: load_tasks(task_file(cfg, "val")),
                   runs_model_code=True, write_demos=write_demos, reward_probes=gmsh_probes,
                   pass_threshold=0.5)  # rewards in [-1, 1]: doing nothing is -1, a right mesh near 1


def _r2e() -> EnvSpec:
    from envs.r2e.cache import build_from_samples, read_index
    from envs.r2e.client import TestServiceClient
    from envs.r2e.data import load_rows
    from envs.r2e.probes import reward_probes as r2e_probes
    from envs.r2e.rollout import R2ESettings, rollout
    from envs.r2e.scenarios import scenarios_from_rows

    def cache_dir(cfg: Any) -> Path:
        return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.art_path) / "r2e_cache"

    def load(cfg: Any) -> list[Scenario]:
        directory = cache_dir(cfg)
        if cfg.cache_dir is None:  # the embedded default: the bundled sample tasks
            build_from_samples(directory)
        if cfg.dataset is None and cfg.cache_dir is None:
            from envs.r2e.cache import sample_rows

            rows = sample_rows()
        else:
            rows = load_rows(cfg.dataset, cfg.split)
        scenarios = scenarios_from_rows(rows, directory, read_index(directory))
        return scenarios[: cfg.dataset_size] if cfg.dataset_size else scenarios

    @contextlib.asynccontextmanager
    async def services(cfg: Any) -> AsyncIterator[dict[str, Any]]:
        root = Path(cfg.rollout_root)
        root.mkdir(parents=True, exist_ok=True)
        if cfg.cache_dir is None:  # the embedded default, which the service needs before any scenario is loaded
            build_from_samples(cache_dir(cfg))  # (the reward check starts the services first)
        runtime = env_options(cfg, "r2e")["test_runtime"]  # envs/r2e/flags.py: --test-runtime process|docker
        async with _service_client(cfg.docker_url, "TEST_SERVICE_TOKEN", TestServiceClient, "envs.r2e.test_service",
                                   "--runtime", runtime, "--cache-dir", str(cache_dir(cfg)),
                                   "--max-concurrent", _local_workers(cfg), *_scratch_args(cfg)) as client:
            yield {"r2e": R2ESettings(tests=client, rollout_root=root, system_prompt=cfg.system_prompt,
                                      reward=cfg.reward, cell_timeout_s=cfg.bash_timeout)}

    # On the bundled samples evaluation reruns all six and reports the held-out one (never demonstrated to SFT)
    # apart from the five with demonstrations; hub data evaluates on dev_10pr_v1.
    def load_val(cfg: Any) -> list[Scenario]:
        if cfg.dataset is None and cfg.cache_dir is None:
            return load(cfg)
        return scenarios_from_rows(load_rows(None, "dev_10pr_v1"), cache_dir(cfg), read_index(cache_dir(cfg)))

    def write_demos(cfg: Any, out: Path) -> None:
        from envs.r2e.demos import write_demos

        if cfg.dataset is not None or cfg.cache_dir is not None:
            raise DatasetError("--sft-demos: r2e demonstrations exist for the bundled samples only; with your own "
                               "data give --sft-data FILE or --sft-demos off")
        write_demos(out, "train", cache_dir=cache_dir(cfg), system_prompt=cfg.system_prompt)

    return EnvSpec(name="r2e", load_scenarios=load, rollout=rollout, default_max_steps=10, services=services,
                   load_val=load_val, runs_model_code=True, step_metrics=_sample_split_rewards,
                   write_demos=write_demos, reward_probes=r2e_probes, pass_threshold=1.0)


def _sample_split_rewards(groups: list[Any]) -> dict[str, float]:
    """Mean reward on the held-out bundled sample and on the demonstrated ones (nothing for other data)."""
    from envs.r2e.scenarios import sample_split_ids

    heldout, demonstrated = set(sample_split_ids("heldout")), set(sample_split_ids("train"))
    figures: dict[str, float] = {}
    for name, ids in (("heldout_reward", heldout), ("demonstrated_reward", demonstrated)):
        rewards = [t.reward for g in groups for t in g.trajectories if t.metadata.get("scenario_id") in ids]
        if rewards:
            figures[name] = sum(rewards) / len(rewards)
    return figures


def _openspiel() -> EnvSpec:
    from envs.openspiel import rollout as openspiel
    from envs.openspiel.probes import reward_probes

    # default_max_steps: our moves per whole game (--game-mode game); a move-mode rollout is one turn anyway.
    # pass_threshold: full marks, a legal move (legal mode) or a won game (outcome, game mode); anything the
    # parser refuses scores 0, so do-nothing and every cheat must stay at 0.
    return EnvSpec(name="openspiel", load_scenarios=openspiel.load_scenarios, rollout=openspiel.rollout,
                   default_max_steps=64, services=openspiel.services, step_metrics=openspiel.game_metrics,
                   load_val=lambda cfg: openspiel.load_scenarios(cfg, "val"), write_demos=openspiel.write_demos,
                   reward_probes=lambda cfg, scenario: reward_probes(openspiel.options_of(cfg), scenario),
                   pass_threshold=1.0)


def _planner() -> EnvSpec:
    from envs.planner import rollout as planner
    from envs.planner.probes import reward_probes

    # pass_threshold: a correct final answer (correctness weight 1.0); token thrift and independence together add
    # at most 0.5 at the default weights, so no plan reaches it without the right number.
    return EnvSpec(name="planner", load_scenarios=planner.load_scenarios, rollout=planner.rollout,
                   services=planner.services, step_metrics=planner.planner_metrics,
                   load_val=lambda cfg: planner.load_scenarios(cfg, "val"), write_demos=planner.write_demos,
                   reward_probes=reward_probes, pass_threshold=1.0)


def _workflow() -> EnvSpec:
    from envs.workflow import rollout as workflow
    from envs.workflow.probes import reward_probes

    # pass_threshold: the top tier (a perfect answer); the lower tiers (0.7 near, 0.4 partial, 0.2 answered) are
    # a gradient for GRPO, not a pass.
    return EnvSpec(name="workflow", load_scenarios=workflow.load_scenarios, rollout=workflow.rollout,
                   services=workflow.services, step_metrics=workflow.workflow_metrics,
                   load_val=lambda cfg: workflow.load_scenarios(cfg, "val"), runs_model_code=True,
                   write_demos=workflow.write_demos, reward_probes=reward_probes, pass_threshold=1.0)


ENVS: dict[str, Callable[[], EnvSpec]] = {"toy": _toy, "gmsh": _gmsh, "r2e": _r2e, "openspiel": _openspiel,
                                          "planner": _planner, "workflow": _workflow}

# Each env's defaults for the flags a user leaves out (ExperimentConfig field names), sized for the embedded
# pretrained model on 2 CPU cores. gmsh is the default env: SFT on its demonstrations, GRPO, held-out evaluation.
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    # gmsh: 3 SFT epochs (steps 1-3) at a high LoRA step size (SmolLM2 memorises the 19 demonstrations: loss 0.96,
    # 0.16, 0.03), then 3 GRPO steps (4-6).
    "gmsh": {"groups_per_step": 2, "rollouts_per_group": 4, "max_tokens": 640, "max_context_tokens": 1536,
             "temperature": 0.7, "lora_rank": 16, "sft_epochs": 3, "sft_learning_rate": 1e-3,
             "max_training_steps": 6},
    # r2e: one RL epoch over the six bundled samples is 3 steps; the demonstrations finish in 4 turns.
    "r2e": {"groups_per_step": 2, "rollouts_per_group": 4, "max_steps": 6, "max_tokens": 256,
            "max_context_tokens": 2048, "temperature": 0.7, "lora_rank": 16, "sft_epochs": 3,
            "sft_learning_rate": 1e-3, "max_training_steps": 6},
    # openspiel: an answer is a few tokens (`move: 4`); 48 demonstrations (task order mixes the cases) keep the SFT
    # stage to a few minutes whatever --game-types selects (num_demos is the env's own --num-demos); then 6 GRPO
    # steps at 1e-4. tic_tac_toe: held-out legal-move rate 0.03 -> 0.88 after SFT -> 0.97 after RL, 7 min.
    "openspiel": {"groups_per_step": 4, "rollouts_per_group": 4, "max_tokens": 16, "temperature": 0.7,
                  "learning_rate": 1e-4, "lora_rank": 16, "sft_epochs": 2, "sft_learning_rate": 1e-3,
                  "max_training_steps": 8, "num_demos": 48},
    # planner: one JSON plan per rollout; the token term's budget is the env's own --token-budget (planner + executor).
    # SmolLM2 answers in prose (0 of 8 plans valid), so 2 SFT epochs on the generator's own plans come first.
    "planner": {"groups_per_step": 2, "rollouts_per_group": 4, "max_tokens": 256, "temperature": 0.7,
                "lora_rank": 16, "sft_epochs": 2, "sft_learning_rate": 1e-3, "max_training_steps": 6},
    # workflow: one workflow per rollout; a short solve() fits in 384 tokens. 2 SFT epochs on the demo workflows
    # (steps 1-2), then GRPO.
    "workflow": {"groups_per_step": 2, "rollouts_per_group": 4, "max_tokens": 384, "temperature": 0.7,
                 "lora_rank": 16, "sft_epochs": 2, "sft_learning_rate": 1e-3, "max_training_steps": 6},
}


# Envs with flags of their own: env name -> a light module (no heavy imports) with `add_flags(group)` and, optionally,
# `validate(options: dict) -> None` raising ValueError("--flag ...") for a bad value. The values reach the env as
# `cfg.env_options` (see `env_options`); trainer/config.py never needs to know them.
ENV_FLAGS: dict[str, str] = {"r2e": "envs.r2e.flags", "openspiel": "envs.openspiel.flags",
                             "planner": "envs.planner.flags", "workflow": "envs.workflow.flags"}


class EnvFlagError(ValueError):
    """An env flag given for another env, or with a bad value; the message names the flag."""


def _flag_module(env: str) -> Any:
    return importlib.import_module(ENV_FLAGS[env])


class _SharedFlagGroup:
    """Envs may declare the same flag (the frozen executor's, shared by planner and workflow): added once."""

    def __init__(self, parser: argparse.ArgumentParser, title: str):
        self._parser, self._group = parser, parser.add_argument_group(title)

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action | None:
        if any(n in self._parser._option_string_actions for n in names):
            return None
        return self._group.add_argument(*names, **kwargs)


def add_env_flags(parser: argparse.ArgumentParser) -> None:
    for env in sorted(ENV_FLAGS):
        _flag_module(env).add_flags(_SharedFlagGroup(parser, f"--env {env}"))


def _env_dests(env: str) -> dict[str, Any]:
    """dest -> default of the flags `env` declares."""
    probe = argparse.ArgumentParser(add_help=False)
    _flag_module(env).add_flags(probe.add_argument_group(env))
    return {action.dest: action.default for action in probe._actions}


def split_env_options(values: dict[str, Any], env: str, given: set[str],
                      mixed: Collection[str] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parsed flags -> (the common config fields, the chosen env's own options), checked by the env's module.
    `mixed`: the envs of a mixed run (--mix, envs/mix/mix.py), whose flags may all be given."""
    common = dict(values)
    options: dict[str, Any] = {}
    own = {dest for name in {env, *mixed} if name in ENV_FLAGS for dest in _env_dests(name)}
    for name in sorted(ENV_FLAGS):
        for dest in _env_dests(name):
            common.pop(dest, None)
            if name == env:  # a flag shared with an env read earlier is gone from `common` already
                options[dest] = values.get(dest)
            elif dest in given and dest not in own:
                where = f"--mix ({', '.join(mixed)})" if mixed else f"--env {env}"
                raise EnvFlagError(f"--{dest.replace('_', '-')} belongs to --env {name}, not {where}")
    if env in ENV_FLAGS:
        validate = getattr(_flag_module(env), "validate", None)
        if validate is not None:
            try:
                validate(options)
            except ValueError as exc:
                raise EnvFlagError(str(exc)) from None
    return common, options


def env_options(cfg: Any, env: str) -> dict[str, Any]:
    """The env's options for this run: its flag defaults, overridden by what the config holds (a config built in
    code, not from the CLI, may hold none)."""
    if env not in ENV_FLAGS:
        return {}
    return {**_env_dests(env), **getattr(cfg, "env_options", {})}


# A mixed-domain run's env (`--mix`): a composite of registered envs, built from the run's ratios.
MIX = "mix"


def get_env(name: str, mix: str | None = None) -> EnvSpec:
    """The env `name`; for a mixed run (name "mix", `mix` = the run's --mix) the composite of envs/mix/mix.py."""
    if name == MIX and mix is not None:
        from envs.mix.mix import mix_env

        return mix_env(mix)
    if name not in ENVS:
        raise UnknownEnvError(f"--env: unknown env {name!r}; choose from {', '.join(sorted(ENVS))}")
    return ENVS[name]()
