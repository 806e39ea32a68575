"""What an env is to the trainer: one `EnvSpec` (how to load its scenarios, run one rollout, start its services,
check its reward), exported as `SPEC` by the env's own `envs/<env>/spec.py` and found through `envs/registry.py`.

Light to import: `train.py --help` and flag checking read every env's spec, so nothing heavy (art, torch, pyspiel,
gmsh) is imported here or at the top of a spec module; a spec's functions import their env's modules when called.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from envs.probes import RewardProbe
from rollouts.scenario import RolloutFn, Scenario

__all__ = ["EnvFlagError", "EnvSpec", "RolloutFn", "UnknownEnvError"]  # RolloutFn: the rollout kit's, re-exported


class UnknownEnvError(ValueError):
    """An env name that is not registered; the message names --env and the envs that are."""


class EnvFlagError(ValueError):
    """An env flag given for another env, or with a bad value; the message is one line naming the flag.
    (Declared here, below the registry, so the mix can raise it without importing the registry.)"""


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
    # The env's options: a frozen dataclass whose fields ARE the env's flags (envs/options.py makes them); the
    # trainer resolves one instance and hands it down as `cfg.env_options`. None: the env has no flags.
    options: type | None = None
    # ExperimentConfig field name -> this env's default for a flag the user leaves out (sizes that suit the env).
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # What `--dataset` must end with for this env (checked before any work); empty: any readable file.
    dataset_suffixes: tuple[str, ...] = ()
    # `--cache-dir` of an env that reads a cache built beforehand (never written by the trainer): (the file that
    # marks a built one, what it is called in the error line). None: the env stores what it generates there.
    reads_cache: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))  # a spec is shared: read-only


def lazy(target: str) -> Callable[..., Any]:
    """`"module:function"` as a callable that imports the module on its first call, so a spec module can name its
    env's heavy functions (rollout, services, metrics, loaders) and stay light to import."""
    module, _, name = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = name
    return call
